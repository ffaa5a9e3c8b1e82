#!/usr/bin/env python3
"""Two cfsmount builds through the setuid helper, mount by mount in turn: the paired difference.

benches/helper.sh runs two builds side by side in one hyperfine run, one build's runs after the
other's; on this project's VMs the order alone moves a case by more than a change of a few tenths
of a millisecond. Here the two builds alternate one mount at a time (in a random order each
round), so that both see the same spells of the machine, and the result is the median of the
differences of each pair, with its quartiles.

Cases (mount only, as `nobody`, launched through `setpriv`; the umount and the preparation are
untimed):
  first     cs9-x86_64-developer, no remembered verdict and no kept copy (removed before each
            mount): copied and vetted in full
  repeated  cs9 again: the caller's verdict and kept copy apply
  one       a 1-file image: what any helper mount costs

Usage (root; the machine-wide lock of the root tier; chrt keeps other work from cutting in):
  flock /tmp/cfsmount-root.lock chrt -f 50 benches/paired.py OLD NEW [CASE...]
OLD and NEW are cfsmount binaries (for example a release build of main and of a branch);
RUNS (default 60) pairs per case; CFS_CONFORMANCE locates the conformance data (default
../shared/conformance). Kept copies need a tmpfs of their own on /run/cfsmount/copies: one is
mounted for the run (as benches/kept-copies.sh does) unless one is there, and unmounted after.
Nothing is left behind: the work directory, the setuid copies, the mounts and (if this run made
them) /run/cfsmount/copies and the verdicts.
"""
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ("first", "repeated", "one")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
COPIES = "/run/cfsmount/copies"


def die(msg):
    print(f"benches/paired.py: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main():
    args = sys.argv[1:]
    if len(args) < 2 or any(c not in CASES for c in args[2:]):
        die(f"usage: paired.py OLD NEW [{'|'.join(CASES)}...]")
    if os.geteuid() != 0:
        die("needs root (installs setuid copies, mounts)")
    old, new = (os.path.abspath(a) for a in args[:2])
    for b in (old, new):
        if not os.access(b, os.X_OK):
            die(f"{b} is not executable")
    cases = args[2:] or list(CASES)
    runs = int(os.environ.get("RUNS", "60"))
    here = os.path.dirname(os.path.abspath(__file__))
    conf = os.environ.get("CFS_CONFORMANCE", os.path.join(here, "..", "..", "shared", "conformance"))
    dump = os.path.join(conf, "composefs-dump", "cs9-x86_64-developer.dump.gz")
    if not os.path.exists(dump):
        die(f"conformance data not found at {conf} (set CFS_CONFORMANCE)")

    w = tempfile.mkdtemp(prefix="cfsmount-paired.", dir="/var/tmp")
    os.chmod(w, 0o755)
    made_copies = made_run = False
    try:
        for d in ("objs", "mnt"):
            os.mkdir(os.path.join(w, d), 0o755)
            os.chown(os.path.join(w, d), 65534, 65534)  # the caller's own basedir and target
        bins = {}
        for name, src in (("old", old), ("new", new)):
            bins[name] = os.path.join(w, f"cfsmount-{name}")
            shutil.copyfile(src, bins[name])
            os.chmod(bins[name], 0o4755)
        cs9 = os.path.join(w, "cs9.img")
        with subprocess.Popen(["gzip", "-dc", dump], stdout=subprocess.PIPE) as gz:
            subprocess.run([new, "mkimage", "--from-dump", "-", cs9], stdin=gz.stdout, check=True)
        one = os.path.join(w, "one.img")
        line = b"/ 4096 40755 2 65534 65534 0 0.0 - - -\n/f 5 100644 1 65534 65534 0 0.0 - hello -\n"
        subprocess.run([new, "mkimage", "--from-dump", "-", one], input=line, check=True)
        for img in (cs9, one):
            os.chmod(img, 0o644)
        made_run = not os.path.exists("/run/cfsmount")
        if not os.path.ismount(COPIES):
            os.makedirs(COPIES, 0o700, exist_ok=True)
            opts = "mode=0700,size=512m,nosuid,nodev,noexec"
            if run(["mount", "-t", "tmpfs", "-o", opts + ",huge=within_size", "cfsmount-paired", COPIES]).returncode:
                subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "cfsmount-paired", COPIES], check=True)
            made_copies = True
        mnt = os.path.join(w, "mnt")

        def umount(b):
            run(NOBODY + [bins[b], "umount", mnt])

        def forget():
            shutil.rmtree("/run/cfsmount/verdicts", ignore_errors=True)
            for e in os.listdir(COPIES):
                if e != ".key":
                    p = os.path.join(COPIES, e)
                    shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)

        def mount(b, case):
            umount(b)
            if case == "first":
                forget()
            img = one if case == "one" else cs9
            t = time.perf_counter()
            r = subprocess.run(NOBODY + [bins[b], "mount", img, mnt, "--basedir", os.path.join(w, "objs")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            ms = (time.perf_counter() - t) * 1e3
            if r.returncode:
                die(f"{b} ({case}): {r.stderr.decode(errors='replace').strip()}")
            return ms

        print(f"benches/paired.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
              f"kernel {os.uname().release}; old {old}, new {new}; {runs} pairs per case")
        for case in cases:
            for b in ("old", "new", "old", "new"):  # warm-up: page cache, verdicts of both
                mount(b, case)
            times = {"old": [], "new": []}
            for _ in range(runs):
                order = ["old", "new"]
                random.shuffle(order)
                for b in order:
                    times[b].append(mount(b, case))
            umount("new")
            diff = [n - o for o, n in zip(times["old"], times["new"])]
            q1, q3 = quartiles(diff)
            print(f"{case}: old median {statistics.median(times['old']):.2f} ms, new median "
                  f"{statistics.median(times['new']):.2f} ms; new - old, paired: median {statistics.median(diff):+.2f} ms "
                  f"(quartiles {q1:+.2f}, {q3:+.2f})")
    finally:
        run(NOBODY + [os.path.join(w, "cfsmount-new"), "umount", os.path.join(w, "mnt")])
        if made_copies:
            run(["umount", "-l", COPIES])
            try:
                os.rmdir(COPIES)
            except OSError:
                pass
        if made_run:
            shutil.rmtree("/run/cfsmount", ignore_errors=True)
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
