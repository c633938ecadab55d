"""Writes Tests/Fixtures/peft/adapters-bin/a/: PEFT adapter `a` of Tests/Fixtures/peft/ saved the older way PEFT and
transformers still read, `adapter_model.bin` (a `torch.save` zip of the same state dict), beside the same
adapter_config.json. Tessera reads the .bin without executing its pickle; the tests check it serves what the
safetensors file serves.

Run with an interpreter that has torch (the CPU wheel) and safetensors, e.g. the one make_peft_fixtures.py uses:
    mk/bin/python scripts/make_peft_bin_fixture.py
"""
import os
import shutil

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "Tests", "Fixtures", "peft", "adapters", "a")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "peft", "adapters-bin", "a")

os.makedirs(OUT, exist_ok=True)
state = load_file(os.path.join(SRC, "adapter_model.safetensors"))
torch.save(state, os.path.join(OUT, "adapter_model.bin"))
shutil.copyfile(os.path.join(SRC, "adapter_config.json"), os.path.join(OUT, "adapter_config.json"))
# Loaded back by torch itself: the same tensors.
back = torch.load(os.path.join(OUT, "adapter_model.bin"), weights_only=True)
assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
print(f"wrote {OUT}: {len(state)} tensors")
