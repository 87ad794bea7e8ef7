"""Webui-independent logic of the CapHuman unit: parameters, validation, infotext, scheduling, model files."""
