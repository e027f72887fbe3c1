"""`make bench`: the native part, the VM part, then docs/BENCHMARKS.md from that one run.

    /opt/mptcpize-py/venv/bin/python bench/run_all.py [--skip-native] [--skip-vm] [--results DIR]
    /opt/mptcpize-py/venv/bin/python bench/run_all.py --render-only --results DIR

The native part (bench/native_bench.py) runs on this machine's kernel; the VM part (bench/vm_bench.py)
runs in scripts/vm.sh's 6.12 guest under the shared VM lock, its JSON result read from the guest's stdout.
Then bench/loader_bench.py natively and in the guest (the Loaders section: start to READY and `run`
cold per loader). Raw results go to DIR (default /tmp/mzb-results), the rendered table to
docs/BENCHMARKS.md; sections measured by hand (HAND_SECTIONS) are kept from the file it replaces. Never
part of `make test`: it takes ~20-25 minutes and measures, it does not assert.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import common
import render
from common import JSON_MARK, PYTHON, REPO, progress

VM_TIMEOUT = 1800


def qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].replace("QEMU emulator version", "qemu").strip()
    except (OSError, IndexError):
        return "qemu"


def other_vms() -> int:
    """qemu processes running now (other workers' test VMs)."""
    out = subprocess.run(["pgrep", "-c", "-x", "qemu-system-x86"], capture_output=True, text=True).stdout
    return int(out.strip() or 0)


def git_state() -> tuple[str, bool]:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip() or "?"
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip())
    return head, dirty


def run_native(results: str) -> list[str]:
    cmd = [PYTHON, "bench/native_bench.py", "--json", os.path.join(results, "native.json")]
    progress("native part: " + " ".join(cmd))
    subprocess.run(cmd, cwd=REPO, check=True)
    return cmd


def run_loaders_native(results: str) -> list[str]:
    # --dry-run: this machine's kernel refuses fmod_ret (the dry run loads the same object's twin).
    cmd = [PYTHON, "bench/loader_bench.py", "--dry-run", "--rounds", "5",
           "--json", os.path.join(results, "loaders-native.json")]
    progress("loaders, native: " + " ".join(cmd))
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return cmd


def run_vm(results: str, script: str = "bench/vm_bench.py", out: str = "vm.json",
           args: tuple[str, ...] = ()) -> list[str]:
    cmd = ["bash", "scripts/vm.sh", "--timeout", str(VM_TIMEOUT), "--", PYTHON, script, *args]
    progress("VM part (waits for the VM lock if another VM runs): " + " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout:   # the guest's stdout: pass through, keep our JSON line
        if line.startswith(JSON_MARK):
            result = json.loads(line[len(JSON_MARK):])
        else:
            sys.stdout.write(line)
    rc = proc.wait()
    if result is None:
        raise SystemExit(f"run_all: the VM part produced no result (exit {rc})")
    with open(os.path.join(results, out), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    if rc != 0:
        progress(f"VM part exited {rc}: {result.get('error', '?')} (rendering what was measured)")
    return cmd


# Sections measured by hand (mmdebstrap roots and container images: minutes each, and the Debian
# archive's state): a rerun keeps them from the file it replaces instead of dropping them.
HAND_SECTIONS = ("## Container image and installed size", "## seccomp supervisor: where a call's µs go")


def kept_by_hand(path: str) -> str:
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        return ""
    kept = []
    for head in HAND_SECTIONS:
        at = old.find("\n" + head)
        if at < 0:
            continue
        end = old.find("\n## ", at + 1)
        kept.append(old[at:end if end >= 0 else len(old)].rstrip("\n") + "\n")
    return "".join(kept)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="/tmp/mzb-results")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--skip-native", action="store_true")
    ap.add_argument("--skip-vm", action="store_true")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--skip-loaders", action="store_true",
                    help="no bench/loader_bench.py (the Loaders section: start to READY per loader)")
    args = ap.parse_args()
    os.makedirs(args.results, exist_ok=True)
    meta_path = os.path.join(args.results, "meta.json")

    if not args.render_only:
        if os.geteuid() != 0:
            sys.exit("run_all: run as root (make bench)")
        t0 = time.monotonic()
        head, dirty = git_state()
        meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": head,
                "dirty": dirty, "loadavg_start": common.loadavg(), "qemu": qemu_version(),
                "results_dir": args.results, "commands": []}
        if not args.skip_native:
            vms_before = other_vms()
            cmd = run_native(args.results)
            meta["other_vms_native"] = f"{vms_before} at its start, {other_vms()} at its end"
            meta["commands"].append(" ".join(cmd))
        meta["loadavg_vm_start"] = common.loadavg()
        if not args.skip_vm:
            meta["commands"].append(" ".join(run_vm(args.results)))
        if not args.skip_loaders:
            if not args.skip_native:
                meta["commands"].append(" ".join(run_loaders_native(args.results)))
            if not args.skip_vm:
                meta["commands"].append(" ".join(run_vm(args.results, "bench/loader_bench.py",
                                                        "loaders-vm.json", ("--rounds", "2"))))
        meta["loadavg_end"] = common.loadavg()
        meta["wall_min"] = (time.monotonic() - t0) / 60
        meta["commands"].insert(0, "make bench   # = " + " ".join([PYTHON, "bench/run_all.py"]))
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)

    with open(meta_path) as f:
        meta = json.load(f)
    parts = {}
    for name in ("native", "vm", "loaders-native", "loaders-vm"):
        try:
            with open(os.path.join(args.results, f"{name}.json")) as f:
                parts[name] = json.load(f)
        except FileNotFoundError:
            parts[name] = {}
    text = render.render(meta, parts["native"], parts["vm"], parts["loaders-native"], parts["loaders-vm"])
    text += kept_by_hand(args.out)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    progress(f"wrote {args.out}")
    # The table, for the terminal.
    in_table = False
    for line in text.splitlines():
        if line.startswith("| figure"):
            in_table = True
        if in_table:
            if not line.startswith("|"):
                break
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
