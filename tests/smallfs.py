"""A real full disk for tests: a script run in a private mount namespace with a small tmpfs
mounted at its first argument (`unshare -m` as root, `unshare -rm` otherwise). A hole read through
a mapping there is a SIGBUS, and ENOSPC is real. Fails, never skips, if it cannot be made here."""
import os
import shutil
import subprocess
import sys


def run_on_small_tmpfs(tmp_path, script, *args, size="6m"):
    """Run `script` (Python source) with argv[1] = the mount point of a `size` tmpfs, then the
    `args`; returns the CompletedProcess (text, stdout/stderr captured)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    f = tmp_path / "script.py"
    f.write_text(script)
    unshare = shutil.which("unshare")
    assert unshare, "unshare(1) is needed to make a small filesystem for this test"
    flags = "-m" if os.geteuid() == 0 else "-rm"
    proc = subprocess.run(
        [unshare, flags, "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"', "sh",
         str(mnt), sys.executable, str(f), str(mnt), *args],
        capture_output=True, text=True, timeout=120)
    assert "mount" not in proc.stderr.split(":")[0], \
        f"cannot mount a small tmpfs here: {proc.stderr}"
    return proc
