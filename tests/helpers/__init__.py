"""Generators shared by the tests: small synthetic part images and tiny taught recipes."""
