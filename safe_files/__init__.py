"""Safe files: the ground floor. Reading the model files a user drops into a folder, and building models from them.

Both `preprocessors/` and `caphuman_ext/` import this package; it imports neither (tests/test_imports.py).

What it guarantees, for every weight or head-model file the extension opens:
- **No code from the file runs.** Every pickle (torch's zip, legacy and tar layouts, FLAME's `generic_model.pkl`,
  DECA's object `.npy`) resolves its globals through an allow-list of constructors (`restricted_pickle`); anything
  else is refused, or becomes an inert placeholder that is never imported nor called (Lightning trainer objects).
- **No allocation larger than the file.** Containers are checked before torch reads them (zip members stored and
  inside the file, tar members regular), each storage must fit in what is left of the file (`weights`), and all
  constructor calls of a load together stay within a budget sized from the pickle's bytes (`pickle_budget`).
  safetensors headers are bounded before the library parses them.
- **Head files the head model can be.** Shapes, index ranges and counts are checked before anything is built
  (`head_limits`); FLAME's arrays are rebuilt from their pickled bytes, never by numpy's `__setstate__`
  (`flame_pickle`).
- **The webui's random numbers are untouched** while a model is built from a file (`rng_guard`).

Why not just `torch.load(weights_only=True)`:
- The hosts ship old torch (AUTOMATIC1111 v1.10 installs torch 2.1), and `weights_only=True` had bypasses that run
  code from the file until torch 2.6 (CVE-2025-32434); the allow-list here does not depend on the torch version.
- `weights_only` bounds what is called, not what is allocated: a small file may still declare storages or build
  containers of gigabytes.
- `caphuman.ckpt` is a Lightning checkpoint whose trainer objects `weights_only` refuses; here they become inert
  placeholders and the tensors load.
- FLAME's `generic_model.pkl` is a plain pickle of chumpy objects (and scipy sparse matrices): `weights_only`
  cannot read it, and chumpy does not import on current numpy. `flame_pickle` reads it without chumpy.

Modules: `weights` (torch / safetensors weight files), `restricted_pickle` (the allow-list unpickler),
`pickle_budget` (the allocation budget), `flame_pickle` (FLAME / DECA pickles), `head_limits` (head-file limits),
`rng_guard` (random states kept).
"""
