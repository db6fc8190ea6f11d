#!/usr/bin/env python3
"""Drives the webhook and the floor server with h2load and prints one table.

Started by bench/load.sh, which builds the binaries. Both servers run pinned to core 1,
h2load to core 0. For every input and load shape the two servers get the same load in
turn (webhook, floor, webhook, floor, ...), each time a warm-up and then a measured run.
Server CPU comes from /proc/PID/stat, peak memory from VmHWM in /proc/PID/status.
"""

import argparse
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEBHOOK = ROOT / "target" / "release" / "django-migrate-webhook"
FLOOR = ROOT / "target" / "release" / "examples" / "floor-server"
INPUTS = ROOT / "tests" / "fixtures" / "bench"
SHAPES = {
    # name: (h2load protocol flags, connections, streams per connection)
    "h1 x1": (["--h1"], 1, 1),
    "h1 x16": (["--h1"], 16, 1),
    "h1 x64": (["--h1"], 64, 1),
    "h2 16 streams": ([], 1, 16),
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def status_kib(pid, key):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def http_get(port, path):
    """Status code of GET path on the admin port, or None when nothing answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64).decode("latin-1")
            return int(head.split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Server:
    def __init__(self, name, argv, url):
        self.name, self.argv, self.url = name, argv, url
        self.proc = None

    def start(self, log):
        self.proc = subprocess.Popen(["taskset", "-c", "1", *self.argv], stdout=log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def check_alive(self):
        if self.proc.poll() is not None:
            sys.exit(f"{self.name} exited with {self.proc.returncode}; see its log")


def wait_listening(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {deadline}s")


def h2load(url, body, shape, duration=None, requests=None, log=None):
    flags, connections, streams = SHAPES[shape]
    argv = [
        "taskset",
        "-c",
        "0",
        "h2load",
        *flags,
        "-t",
        "1",
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-d",
        str(body),
        "-H",
        "Content-Type: application/json",
    ]
    if duration is not None:
        argv += ["-D", str(duration)]
    if requests is not None:
        argv += ["-n", str(requests)]
    if log is not None:
        argv += ["--log-file", str(log)]
    out = subprocess.run([*argv, url], capture_output=True, text=True).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    took = re.search(r"finished in ([\d.]+)(ms|s),", out)
    if not (m and codes and took):
        sys.exit(f"cannot read h2load's output:\n{out}")
    seconds = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
    return {"done": int(m.group(2)), "ok": int(codes.group(1)), "failed": int(m.group(4)), "seconds": seconds}


def latencies_us(log):
    out = []
    for line in pathlib.Path(log).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == "200":
            out.append(int(parts[2]))
    return out


def percentiles(samples):
    samples = sorted(samples)

    def at(p):
        if not samples:
            return float("nan")
        return samples[min(len(samples) - 1, int(round(p / 100 * (len(samples) - 1))))]

    return {p: at(p) for p in (50, 90, 99)}


def pct(lat, p):
    return lat[p]


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux 4.0+), so each run reports its own peak."""
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")


def measure(server, body, shape, args, tmp):
    server.check_alive()
    reset_peak(server.proc.pid)
    h2load(server.url, body, shape, duration=args.warmup)
    log = tmp / "requests.log"
    before = cpu_seconds(server.proc.pid)
    result = h2load(server.url, body, shape, duration=args.duration, log=log)
    result["cpu"] = cpu_seconds(server.proc.pid) - before
    result["latencies"] = latencies_us(log)
    log.unlink()
    result["peak_kib"] = status_kib(server.proc.pid, "VmHWM")
    server.check_alive()
    return result


def startup_ms(tls_cert, tls_key, runs=7):
    """Process start to /readyz answering 200, the median of a few runs."""
    times = []
    for _ in range(runs):
        port, admin = free_port(), free_port()
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                str(WEBHOOK),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{admin}",
                "--tls-cert",
                tls_cert,
                "--tls-key",
                tls_key,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while http_get(admin, "/readyz") != 200:
                if time.monotonic() - started > 10:
                    sys.exit("/readyz did not answer 200 within 10s")
                time.sleep(0.0005)
            times.append((time.monotonic() - started) * 1000)
        finally:
            proc.terminate()
            proc.wait()
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds per cell")
    parser.add_argument("--inputs", default="small,typical,large,update,rollout")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="of: " + ", ".join(SHAPES))
    parser.add_argument(
        "--growth-requests", type=int, default=1_000_000, help="requests of the memory growth run (0 skips it)"
    )
    args = parser.parse_args()
    inputs = args.inputs.split(",")
    shapes = args.shapes.split(",")
    for name in inputs:
        if not (INPUTS / f"{name}.json").exists():
            sys.exit(f"no input {name}: have " + ", ".join(p.stem for p in sorted(INPUTS.glob("*.json"))))
    for shape in shapes:
        if shape not in SHAPES:
            sys.exit(f"no shape {shape!r}: have " + ", ".join(SHAPES))

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="django-migrate-bench."))
    subprocess.run(
        [str(WEBHOOK), "certs", "--out", str(tmp), "--ip", "127.0.0.1"], check=True, stdout=subprocess.DEVNULL
    )
    cert, key = str(tmp / "tls.crt"), str(tmp / "tls.key")
    port, admin, floor_port = free_port(), free_port(), free_port()
    webhook = Server(
        "webhook",
        [
            str(WEBHOOK),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            f"127.0.0.1:{admin}",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
        f"https://127.0.0.1:{port}/mutate",
    )
    floor = Server(
        "floor",
        [str(FLOOR), f"127.0.0.1:{floor_port}", cert, key, *[str(INPUTS / f"{n}.json") for n in inputs]],
        f"https://127.0.0.1:{floor_port}/{{input}}",
    )
    servers = [webhook, floor]
    log = open(tmp / "servers.log", "w")
    try:
        for s in servers:
            s.start(log)
        wait_listening(port)
        wait_listening(floor_port)
        print(f"# {os.cpu_count()} cores, {platform_line()}")
        print(
            f"# {args.duration}s runs after {args.warmup}s warm-up, {args.rounds} rounds, "
            "servers on core 1, h2load on core 0\n"
        )
        header = (
            f"{'input':8} {'load':14} | {'req/s':>8} {'floor':>8} {'ratio':>5} | "
            f"{'p50 ms':>6} {'p90':>6} {'p99':>6} | {'floor p99':>9} | "
            f"{'CPU µs/req':>10} {'floor':>6} {'ratio':>5} | {'peak MiB':>8} {'floor':>5} | errors"
        )
        print(header)
        print("-" * len(header))
        rows = []
        for name in inputs:
            body = INPUTS / f"{name}.json"
            for shape in shapes:
                runs = {"webhook": [], "floor": []}
                for _ in range(args.rounds):
                    for s in servers:
                        url = s.url.replace("{input}", name)
                        target = Server(s.name, s.argv, url)
                        target.proc = s.proc
                        runs[s.name].append(measure(target, body, shape, args, tmp))
                row = {"input": name, "shape": shape}
                for side, results in runs.items():
                    done = sum(r["done"] for r in results)
                    row[side] = {
                        "rps": sum(r["done"] for r in results) / sum(r["seconds"] for r in results),
                        "cpu_us": 1e6 * sum(r["cpu"] for r in results) / max(done, 1),
                        # Only the percentiles are kept: a run has ~10^5 samples.
                        "lat": percentiles([x for r in results for x in r["latencies"]]),
                        "errors": sum(r["done"] - r["ok"] + r["failed"] for r in results),
                        "peak_kib": max(r["peak_kib"] for r in results),
                    }
                w, f = row["webhook"], row["floor"]
                lat = w["lat"]
                print(
                    f"{name:8} {shape:14} | {w['rps']:8.0f} {f['rps']:8.0f} {w['rps'] / f['rps']:5.2f} | "
                    f"{pct(lat, 50) / 1000:6.2f} {pct(lat, 90) / 1000:6.2f} {pct(lat, 99) / 1000:6.2f} | "
                    f"{pct(f['lat'], 99) / 1000:9.2f} | "
                    f"{w['cpu_us']:10.0f} {f['cpu_us']:6.0f} {w['cpu_us'] / f['cpu_us']:5.2f} | "
                    f"{w['peak_kib'] / 1024:8.1f} {f['peak_kib'] / 1024:5.1f} | "
                    f"{w['errors']}/{f['errors']}",
                    flush=True,
                )
                rows.append(row)
        x64 = [r for r in rows if r["shape"] == "h1 x64" and r["input"] == "typical"]
        peak = {side: max((r[side]["peak_kib"] for r in x64), default=0) for side in ("webhook", "floor")}
        if x64:
            print(
                "\npeak RSS (VmHWM) under the 64-connection load, typical input: "
                f"webhook {peak['webhook'] / 1024:.1f} MiB, floor {peak['floor'] / 1024:.1f} MiB"
            )
        for s in servers:
            s.stop()

        growth = None
        if args.growth_requests:
            fresh = Server("webhook", webhook.argv, webhook.url)
            fresh.start(log)
            wait_listening(port)
            body = INPUTS / "typical.json"
            h2load(fresh.url, body, "h1 x16", requests=10_000)
            first = status_kib(fresh.proc.pid, "VmRSS")
            r = h2load(fresh.url, body, "h1 x16", requests=args.growth_requests - 10_000)
            last = status_kib(fresh.proc.pid, "VmRSS")
            hwm = status_kib(fresh.proc.pid, "VmHWM")
            fresh.check_alive()
            fresh.stop()
            growth = (first, last, hwm, r["failed"] + r["done"] - r["ok"])
            print(
                f"RSS after 10 000 requests {first / 1024:.2f} MiB, after {args.growth_requests:,} "
                f"{last / 1024:.2f} MiB (growth {(last - first) / 1024:+.2f} MiB, "
                f"errors {growth[3]}, VmHWM {hwm / 1024:.1f} MiB)"
            )

        start = startup_ms(cert, key)
        print(f"process start to /readyz 200: {start:.1f} ms (median of 7)")
        targets(rows, peak, growth, start)
    finally:
        for s in servers:
            s.stop()
        log.close()


def platform_line():
    model = "unknown CPU"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, Linux {os.uname().release}"


def targets(rows, peak, growth, start):
    print("\ntargets:")

    def line(ok, text):
        print(f"  [{'met' if ok else 'MISSED'}] {text}")

    for row in rows:
        w, f = row["webhook"], row["floor"]
        if row["shape"] == "h1 x16" and row["input"] in ("small", "typical", "update"):
            line(
                w["rps"] >= f["rps"],
                f"{row['input']}, h1 x16: throughput {w['rps'] / f['rps']:.2f}x the floor (>= 1.0)",
            )
            line(
                w["cpu_us"] <= f["cpu_us"],
                f"{row['input']}, h1 x16: CPU per request {w['cpu_us'] / f['cpu_us']:.2f}x the floor (<= 1.0)",
            )
        if row["shape"] == "h1 x1" and row["input"] == "typical":
            p99 = pct(w["lat"], 99) / 1000
            line(p99 <= 0.35, f"typical, h1 x1: p99 {p99:.3f} ms (<= 0.35)")
        if row["shape"] == "h2 16 streams":
            p99 = pct(w["lat"], 99) / 1000
            line(p99 <= 2, f"{row['input']}, h2 16 streams: p99 {p99:.2f} ms (<= 2)")
        if w["errors"]:
            line(False, f"{row['input']}, {row['shape']}: {w['errors']} failed requests")
    if peak["webhook"]:
        line(peak["webhook"] <= 12 * 1024, f"typical, h1 x64: peak RSS {peak['webhook'] / 1024:.1f} MiB (<= 12)")
    if growth:
        first, last, _, errors = growth
        line(last - first <= 1024, f"RSS growth over the growth run {(last - first) / 1024:+.2f} MiB (<= 1)")
        line(errors == 0, f"growth run: {errors} failed requests")
    line(start <= 50, f"start to /readyz 200: {start:.1f} ms (<= 50)")


if __name__ == "__main__":
    main()
