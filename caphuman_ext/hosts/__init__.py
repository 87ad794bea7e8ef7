"""Host adapters: translate one webui's generation lifecycle into `caphuman_ext.lifecycle.Generation` calls."""
