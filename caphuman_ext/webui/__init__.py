"""The webui's side of the extension (both hosts): the settings table, the X/Y/Z axes and the unit panel. The webui's
own modules are passed in by the script, never imported here."""
