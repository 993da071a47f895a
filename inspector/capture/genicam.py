"""GigE Vision / USB3 Vision cameras through ``harvesters`` (the optional extra ``genicam``).

`GenICamSource` finds the GenTL producer (.cti), opens the camera by serial number and converts its
buffers (`_genicam_to_bgr`: Mono, RGB, BGR and Bayer, 8 to 16 bits unpacked) to 8-bit BGR frames.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np

from inspector.capture.base import GenICamSpec, SourceBase
from inspector.errors import CameraNotFound, CaptureError
from inspector.results import Frame

__all__ = [
    "GenICamSource",
]

logger = logging.getLogger("inspector.capture")


class GenICamSource(SourceBase):
    """A GigE Vision / USB3 Vision camera through ``harvesters`` and a GenTL producer (.cti). Live.

    Needs the optional extra (``pip install 'inspector[genicam]'``) and a GenTL producer file from the
    camera vendor's SDK (or a generic one); without either, `open()` says what to install or set.
    """

    is_live = True
    FETCH_TIMEOUT_S: Final = 2.0   # longer than any sane exposure + transfer; a stall means a lost camera

    def __init__(self, spec: GenICamSpec) -> None:
        super().__init__()
        self.spec = spec
        self.name = f"genicam {spec.serial}" if spec.serial else "genicam (first camera)"
        self._harvester: Any = None
        self._acquirer: Any = None

    def _cti_file(self) -> Path:
        if self.spec.cti is not None:
            cti = Path(self.spec.cti)
            if not cti.is_file():
                msg = f"GenTL producer {cti} not found; install the camera vendor's SDK or fix source.cti"
                raise CaptureError(msg)
            return cti
        for folder in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep):
            if folder and Path(folder).is_dir():
                found = sorted(Path(folder).glob("*.cti"))
                if found:
                    return found[0]
        msg = (
            "no GenTL producer (.cti) file: set source.cti in the recipe, or GENICAM_GENTL64_PATH to the "
            "folder holding it (installed with the camera vendor's SDK, e.g. Basler pylon, "
            "Allied Vision Vimba X or Balluff/MATRIX VISION mvIMPACT Acquire)"
        )
        raise CaptureError(msg)

    def open(self) -> None:
        """Find the camera and start acquisition.

        Raises:
            CaptureError: harvesters or the producer is missing.
            CameraNotFound: no camera (or none with the serial number) is visible.
        """
        self.close()
        try:
            from harvesters.core import Harvester  # optional extra: imported only when used
        except ImportError as exc:
            msg = "GenICam cameras need the 'harvesters' package: pip install 'inspector[genicam]'"
            raise CaptureError(msg) from exc
        cti = self._cti_file()
        harvester = Harvester()
        try:
            harvester.add_file(os.fspath(cti))
            harvester.update()
            devices = list(harvester.device_info_list)
            if not devices:
                msg = (
                    f"no GenICam camera visible through {cti.name}; "
                    f"is it powered and on this network/USB bus?"
                )
                raise CameraNotFound(msg)
            if self.spec.serial is not None:
                serials = [getattr(d, "serial_number", "?") for d in devices]
                if self.spec.serial not in serials:
                    visible = ", ".join(map(str, serials))
                    msg = f"GenICam camera {self.spec.serial} not found; visible: {visible}"
                    raise CameraNotFound(msg)
                acquirer = harvester.create({"serial_number": self.spec.serial})
            else:
                acquirer = harvester.create(0)
            if self.spec.exposure_us is not None:
                try:
                    acquirer.remote_device.node_map.ExposureTime.value = float(self.spec.exposure_us)
                except Exception as exc:  # GenApi raises its own types; the camera still works
                    logger.warning("%s: exposure %s us refused: %s", self.name, self.spec.exposure_us, exc)
            acquirer.start()
        except CaptureError:
            harvester.reset()
            raise
        except Exception as exc:  # harvesters/GenTL errors are not one family
            harvester.reset()
            msg = f"{self.name} could not be opened: {exc}"
            raise CameraNotFound(msg) from exc
        self._harvester, self._acquirer = harvester, acquirer

    def read(self) -> Frame:
        """Fetch the next buffer and convert it to BGR.

        Raises:
            CaptureError: not open, no buffer within `FETCH_TIMEOUT_S`, or an unsupported pixel format.
        """
        return self._fetch(self.FETCH_TIMEOUT_S, trigger=False)

    def _fetch(self, timeout: float, *, trigger: bool) -> Frame:
        """One buffer as a BGR frame; with ``trigger``, TriggerSoftware is executed first."""
        if self._acquirer is None:
            msg = f"{self.name} is not open; call open() first"
            raise CaptureError(msg)
        start = time.perf_counter()
        try:
            if trigger:
                self._acquirer.remote_device.node_map.TriggerSoftware.execute()
            with self._acquirer.fetch(timeout=timeout) as buffer:
                component = buffer.payload.components[0]
                image = _genicam_to_bgr(
                    np.asarray(component.data), str(component.data_format), component.width, component.height
                )
        except CaptureError:
            raise
        except Exception as exc:
            what = "triggered frame" if trigger else "frame"
            msg = f"{self.name} gave no {what} within {timeout:.3f} s ({exc}); is it still connected?"
            raise CaptureError(msg) from exc
        return self._frame(image, start)

    def arm_software_trigger(self) -> bool:
        """Acquire one frame per `read_triggered` (TriggerMode On, TriggerSource Software) instead of free-running.

        Returns False, with the camera free-running again, when it has no software trigger (a warning
        names the feature that failed). Needs an open camera.
        """
        acquirer = self._acquirer
        if acquirer is None:
            msg = f"{self.name} is not open; call open() first"
            raise CaptureError(msg)
        nodes = acquirer.remote_device.node_map
        acquirer.stop()                         # trigger features are locked while acquiring
        try:
            try:
                nodes.TriggerSelector.value = "FrameStart"
            except Exception:                   # a camera with a single trigger has no selector
                logger.debug("%s: no TriggerSelector", self.name, exc_info=True)
            nodes.TriggerMode.value = "On"
            nodes.TriggerSource.value = "Software"
        except Exception as exc:                # GenApi raises its own types
            logger.warning("%s: no software trigger (%s); taking the newest frame after each trigger", self.name, exc)
            try:
                nodes.TriggerMode.value = "Off"
            except Exception:
                logger.debug("%s: TriggerMode Off refused", self.name, exc_info=True)
            acquirer.start()
            return False
        acquirer.start()
        return True

    def read_triggered(self, timeout: float) -> Frame:
        """Execute TriggerSoftware and fetch that frame (armed by `arm_software_trigger`).

        Raises:
            CaptureError: not open, or no frame within ``timeout`` s.
        """
        return self._fetch(max(0.001, timeout), trigger=True)

    def close(self) -> None:
        acquirer, harvester = self._acquirer, self._harvester
        self._acquirer = self._harvester = None
        for step in (getattr(acquirer, "stop", None), getattr(acquirer, "destroy", None),
                     getattr(harvester, "reset", None)):
            if step is not None:
                try:
                    step()
                except Exception:   # releasing a lost camera may fail; nothing more to do
                    logger.debug("%s: error while closing", self.name, exc_info=True)


_BAYER_TO_BGR: Final = {
    "BayerRG": cv2.COLOR_BayerRG2BGR,
    "BayerGR": cv2.COLOR_BayerGR2BGR,
    "BayerBG": cv2.COLOR_BayerBG2BGR,
    "BayerGB": cv2.COLOR_BayerGB2BGR,
}


def _genicam_to_bgr(data: np.ndarray, pixel_format: str, width: int, height: int) -> np.ndarray:
    """A GenICam buffer (flat array) -> (H, W, 3) uint8 BGR, copied out of the driver's memory.

    Supports Mono8/10/12/16, RGB8, BGR8 and Bayer 8/10/12/16 (unpacked formats only).
    """
    bits = int(m.group(1)) if (m := re.search(r"(\d+)$", pixel_format)) else 8
    if pixel_format.endswith("p") or "Packed" in pixel_format:
        msg = (
            f"GenICam pixel format {pixel_format} (packed) is not supported; "
            f"set an unpacked format such as Mono8"
        )
        raise CaptureError(msg)
    if bits > 8:
        data = (data.astype(np.float32) * (255.0 / ((1 << bits) - 1))).round().astype(np.uint8)
    if pixel_format.startswith("Mono"):
        return cv2.cvtColor(data.reshape(height, width), cv2.COLOR_GRAY2BGR)
    if pixel_format.startswith("RGB"):
        return cv2.cvtColor(data.reshape(height, width, 3), cv2.COLOR_RGB2BGR)
    if pixel_format.startswith("BGR"):
        return data.reshape(height, width, 3).copy()
    for prefix, code in _BAYER_TO_BGR.items():
        if pixel_format.startswith(prefix):
            return cv2.cvtColor(data.reshape(height, width), code)
    msg = f"GenICam pixel format {pixel_format} is not supported; set Mono8, RGB8, BGR8 or a Bayer8 format"
    raise CaptureError(msg)
