"""Drop a wheel's native libraries that the lent GPU image cannot load, to fit the device tool's 64 MiB.

bitsandbytes ships one library per CUDA, ROCm and XPU release (129 MB unpacked, 43 MB packed); the
image's torch is built for CUDA 13.0, so only the CUDA 13 builds and the CPU build are kept.
Usage: python3 gpu/slim_wheel.py WHEEL KEEP_GLOB... drops every ``.so`` whose name matches no
KEEP_GLOB (rewrites WHEEL in place, RECORD included).
"""
import fnmatch
import os
import sys
import zipfile


def slim(path: str, keep: list[str]) -> tuple[int, int]:
    def dropped(name: str) -> bool:
        base = os.path.basename(name)
        return base.endswith(".so") and not any(fnmatch.fnmatch(base, k) for k in keep)

    before = os.path.getsize(path)
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines()
                data = ("\n".join(r for r in rows if not dropped(r.split(",", 1)[0])) + "\n").encode()
            dst.writestr(info, data)
    os.replace(tmp, path)
    return before, os.path.getsize(path)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: slim_wheel.py WHEEL KEEP_GLOB...")
    b, a = slim(sys.argv[1], sys.argv[2:])
    print(f"{os.path.basename(sys.argv[1])}: {b} -> {a} bytes")
