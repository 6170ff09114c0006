#!/usr/bin/env python3
"""What each hostile request of issue 21 costs the server: CPU seconds (user + system,
from /proc/PID/stat) and resident memory before, at the peak (sampled) and after.

    python3 benches/hostile.py target/release/attache

Starts its own `attache serve` (SQLite, fs, a fresh folder) on a free port; needs
only Python's standard library. One line per reproduction, tab-separated.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import hmac
import hashlib

SECRET = "hostile-bench-secret-0123456789abcdef"
TICKS = os.sysconf("SC_CLK_TCK")


def token(tenant):
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "bench", "tenant_id": tenant, "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def post(base, body, bearer=None, timeout=60):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/graphql", data=data, method="POST",
                                     headers={"content-type": "application/json"})
    if bearer:
        request.add_header("authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError as err:
        return None, str(err).encode()


def measure(pid, name, action):
    before_cpu, before_rss = cpu_seconds(pid), rss_mib(pid)
    peak = [before_rss]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_mib(pid))
            except OSError:
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    outcome = action()
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    alive = os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    after_rss = rss_mib(pid) if alive else 0
    print(f"{name}\t{outcome}\tcpu {cpu_seconds(pid) - before_cpu:.3f} s\twall {wall:.2f} s\t"
          f"rss {before_rss:.0f} -> peak {peak[0]:.0f} -> {after_rss:.0f} MiB\talive {alive}", flush=True)


def main():
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/attache"
    folder = tempfile.mkdtemp(prefix="attache-hostile-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [binary, "serve", "--listen-addr", f"127.0.0.1:{port}",
         "--database-url", f"sqlite://{folder}/a.db?mode=rwc", "--storage-root", f"{folder}/up",
         "--jwt-secret", SECRET, "--signing-key", SECRET, "--upload-queue-timeout-seconds", "1"],
        stdout=subprocess.DEVNULL, stderr=open(f"{folder}/log", "w"))
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    pid = server.pid
    bearer = token("hostile")
    try:
        for who, auth in (("anonymous", None), ("token", bearer)):
            deep = "{__typename @skip(if: " + "[" * 1600 + "]" * 1600 + ")}"
            measure(pid, f"1 nested literals 1,600 ({who})",
                    lambda: post(base, {"query": deep}, auth)[0])
            levels = 24
            frags = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels))
            doubling = "{ ...F0 } " + frags + f" fragment F{levels} on Query {{ __typename }}"
            measure(pid, f"2 fragment doubling L=24 ({who})",
                    lambda: post(base, {"query": doubling}, auth)[0])

            def names():
                for round_ in range(100):
                    post(base, [{"query": "{__typename}", "operationName": f"op{round_}_{i}"} for i in range(10)], auth)
                return len(urllib.request.urlopen(f"{base}/metrics").read())
            measure(pid, f"3 1,000 made-up operation names, /metrics bytes ({who})", names)

        def slots():
            held = []
            for _ in range(8):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100000\r\n\r\n{")
                held.append(s)
            big = base64.b64encode(b"%PDF-1.4\n" + b" " * 200_000).decode()
            status, body = post(base, {"query": "mutation($i: UploadAttachmentInput!) { uploadAttachment(input: $i) { id } }",
                                       "variables": {"i": {"ownerType": "contract", "ownerId": "c", "filename": "a.pdf", "base64": big}}}, bearer)
            for s in held:
                s.close()
            return f"upload {status} {'ok' if b'errors' not in body else body[:80]}"
        measure(pid, "4 8 anonymous half-sent bodies, then a 200 KB upload", slots)

        def idle():
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(1100)]
            started = time.monotonic()
            urllib.request.urlopen(f"{base}/healthz", timeout=30).read()
            answered = time.monotonic() - started
            for s in held:
                s.close()
            return f"/healthz in {answered:.2f} s"
        measure(pid, "5 1,100 idle connections", idle)

        inputs = [{"ownerType": "contract", "ownerId": "c", "filename": f"f{i}.txt", "base64": "eAo="} for i in range(20)]
        aliases = "mutation($a: [UploadAttachmentInput!]!) {" + " ".join(
            f"u{i}: uploadAttachments(input: $a) {{ id }}" for i in range(480)) + "}"
        measure(pid, "6 480 aliases x 20 files",
                lambda: post(base, {"query": aliases, "variables": {"a": inputs}}, bearer)[1][:60])
        listing = "{" + " ".join(f"l{i}: attachments(ownerType: \"contract\", first: 100) {{ totalCount }}" for i in range(240)) + "}"
        measure(pid, "6 10 copies of a 240-alias listing",
                lambda: post(base, [{"query": listing}] * 10, bearer)[1][:60])
        typenames = "{" + " ".join(f"a{i}:__typename" for i in range(780_000)) + "}"
        measure(pid, "7 780,000 __typename aliases",
                lambda: post(base, {"query": typenames}, bearer)[1][:60])

        def busy():
            held = []
            for _ in range(9):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(f"POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode())
                held.append(s)
            last = held[-1]
            last.settimeout(15)
            started = time.monotonic()
            answer = last.recv(200).split(b"\r\n")[0].decode()
            waited = time.monotonic() - started
            for s in held:
                s.close()
            return f"{answer} after {waited:.2f} s"
        measure(pid, "8 the 9th slow upload with 8 slots (queue timeout 1 s)", busy)

        def endless_head():
            filler = b"\r\n\ra" * 3_500_000
            body = (b"--b\r\nContent-Disposition: form-data; name=\"operations\"\r\nX: "
                    + filler)
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(60)
            s.sendall(f"POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n"
                      "Apollo-Require-Preflight: 1\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode())
            try:
                s.sendall(body)
            except OSError:
                pass  # refused before the end: the rest is not read
            try:
                answer = s.recv(200).split(b"\r\n")[0].decode()
            except OSError as err:
                answer = f"closed ({err})"
            s.close()
            return answer
        measure(pid, "9 a multipart part head of 14 MB that never ends", endless_head)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
