"""Header bytes of the model file: format version 3 (compressed metadata) against version 2.

Run: ``python benchmarks/bench_header.py``. For each model it saves the file (version 3), then
writes the same file as version 2 would have (the same metadata document, uncompressed, the
same data section) and prints markdown: file and header bytes of both, and the header's share.
Frozen weights are never trained, so the header does not depend on training: only the mask
symbol counts change, by a few digits.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import hiddenite
from hiddenite import SupermaskConfig, fileformat, models
from hiddenite.fileformat import META_KEY, META_SHA_KEY, _sha256, read_header
from hiddenite.methods import method_config

CASES = [
    ("resnet20 frozen p=0.5 k=0.3", "resnet20", {}, ("frozen", {"pruned": 0.5}), 0.3),
    ("resnet20 edge-popup k=0.3", "resnet20", {}, ("edge-popup", {}), 0.3),
    ("conv4 w0.5 frozen p=0.6 k=0.3", "conv4", {"width": 0.5}, ("frozen", {"pruned": 0.6}), 0.3),
    ("mlp 300-100 edge-popup k=0.3", "mlp", {}, ("edge-popup", {}), 0.3),
]


def as_version_2(blob: bytes) -> bytes:
    """The same file as format version 2 wrote it: the metadata document stored as it is."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    envelope = json.loads(header["__metadata__"][META_KEY])
    text = fileformat._open_envelope(envelope)
    meta = json.loads(text)
    meta["format_version"] = 2
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    header["__metadata__"] = {META_KEY: text, META_SHA_KEY: _sha256(text.encode("utf-8"))}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + blob[8 + size :]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print("| model | v2 file B | v2 header B | v3 file B | v3 header B | header share v2 -> v3 |")
    print("|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, kwargs, (method, args), density in CASES:
            config = SupermaskConfig(density=density, method=method_config(method, **args))
            model = models.create(name, config, in_channels=1, num_classes=10, **kwargs)
            path = Path(tmp) / "m.hnn"
            v3 = hiddenite.save(model, path)
            old = Path(tmp) / "v2.hnn"
            old.write_bytes(as_version_2(path.read_bytes()))
            v2 = read_header(old)  # the version 2 reader accepts it: a genuine version 2 file
            assert v2.format_version == 2 and v3.format_version == 3
            print(
                f"| {label} | {v2.file_bytes:,} | {v2.header_bytes:,} | {v3.file_bytes:,} | "
                f"{v3.header_bytes:,} | {v2.header_bytes / v2.file_bytes:.0%} -> "
                f"{v3.header_bytes / v3.file_bytes:.0%} |"
            )


if __name__ == "__main__":
    main()
