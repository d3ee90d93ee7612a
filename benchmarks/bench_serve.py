"""Load benchmark of `realm serve`: how many live clients one machine serves in time, and what hostile clients do to them.

    python benchmarks/bench_serve.py [--checkpoint checkpoints/realm-demo] [--seconds 20] [--levels 1,2,4,8,...]
    python benchmarks/bench_serve.py --hostile [--clients 8] [--seconds 30]
    python benchmarks/bench_serve.py --browser [--seconds 20] [--server-args "--profile ameca"]

Starts `realm serve` (loopback, a free port, its default limits unless ``--server-args``) in its
own process.

**Levels** (default): for each level N runs N concurrent clients in this process, each streaming
``--seconds`` of speech (jfk.flac, looped) at real-time pace in 100 ms chunks, starts spread over
the first second. Per level it reports the added latency of streamed frames (chunk sent -> frame
received: model compute, queueing and transport on top of the model's algorithmic latency),
dropped and missing frames, clients the server refused (``server_full``: past its measured
capacity), and the server's memory (peak RSS over the level minus the RSS with no client, per
client). A level passes when p95 added latency < 50 ms and no frame of an admitted client is
dropped or missing; the script reports the largest passing N with no client refused. Stops after
the first failing level unless ``--all``.

**Hostile** (``--hostile``): ``--clients`` real-time clients stream alone (quiet), then again
while another process attacks the server (idlers that never send start, ``{}`` flooders, a
2-byte audio flooder, a 30 KB bad-message sender that never reads, clients streaming as fast as
they can, clients streaming at 4x real time that never read; each reconnects 0.5 s after being
closed). It reports the real-time clients' latency in both phases, the server's RSS over time
and what happened to the attackers.

**Browser** (``--browser``): the listener page in a headless Chromium (realm.web.browser) whose
fake microphone plays jfk.flac (48 kHz WAV, looped by Chromium), through getUserMedia, the
AudioWorklet's resampler and the page's WebSocket, for ``--seconds``, ``--repeat`` times. It
reports, per stage, the latency on top of the model's algorithmic latency: chunk sent -> frame
received (compute, queueing, network, JSON), -> the first paint after it (the added latency the
page shows), the capture -> send delay the page cannot see (computed: the worklet's 20 ms chunks
and 128-sample render quantum, the resampler's look-ahead), and frames late for their play-out
slot, not drawn and dropped.

Clients, attackers, browser and server share the machine (their CPU use is part of the load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class RssSampler(threading.Thread):
    """RSS of a process, sampled every 0.5 s: ``samples`` holds (seconds since start, MB)."""

    def __init__(self, pid: int, t0: float | None = None):
        super().__init__(daemon=True)
        self.pid, self.running, self.samples = pid, True, []
        self.t0 = time.perf_counter() if t0 is None else t0

    @property
    def peak(self) -> float:
        return max((m for _, m in self.samples), default=float("nan"))

    def run(self):
        while self.running:
            self.samples.append((time.perf_counter() - self.t0, rss_mb(self.pid)))
            time.sleep(0.5)


class Server:
    """`realm serve` in its own process; its output is drained (it logs refusals) and kept in ``lines``."""

    def __init__(self, checkpoint: str, extra: list[str]):
        self.cmd = [str(Path(sys.executable).parent / "realm"), "serve", "-c", checkpoint, "--port", "0", *extra]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: deque = deque(maxlen=400)
        self.banner = ""
        self.url = None
        for line in self.proc.stdout:  # warnings, then the banner
            self.lines.append(line)
            if m := re.search(r"ws://[\d.]+:\d+", line):
                self.url, self.banner = m.group(0), line.strip()
                break
        if self.url is None:
            sys.exit("server did not start:\n" + "".join(self.lines))
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> str:
        """Ctrl-C; the server's last line (its totals)."""
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "did not stop within 30 s of Ctrl-C; last lines:\n" + "".join(list(self.lines)[-20:])
        self.reader.join(timeout=5)
        return next((x.strip() for x in reversed(self.lines) if x.startswith("stopped")), "")


async def level(url: str, audio: np.ndarray, n: int, rng: np.random.Generator) -> list:
    """N real-time clients, starts spread over 1 s: their ListenResults (an exception for a refused one)."""
    from realm.serve import listen_async

    async def one(delay: float, seed: int):
        await asyncio.sleep(delay)
        return await listen_async(url, audio, realtime=True, chunk_ms=100, options={"seed": seed})

    return await asyncio.gather(*[one(float(d), k) for k, d in enumerate(rng.uniform(0, 1, n))], return_exceptions=True)


def summarise(rs: list, n: int) -> dict:
    ok = [r for r in rs if not isinstance(r, BaseException)]
    refused = [r for r in rs if isinstance(r, BaseException)]
    lat = [r.latency_s[(r.chunk >= 0) & np.isfinite(r.latency_s)] for r in ok]
    lat = np.concatenate(lat) * 1e3 if lat else np.zeros(0)
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    return {
        "clients": n, "admitted": len(ok), "refused": len(refused),
        "refusals": sorted({str(e)[:120] for e in refused}),
        "frames": int(sum(r.received for r in ok)), "dropped": int(sum(r.end.get("dropped", 0) for r in ok)),
        "missing": int(sum(r.missing for r in ok)), "p50_ms": pct(50), "p95_ms": pct(95),
        "max_ms": float(lat.max()) if len(lat) else float("nan"),
    }  # fmt: skip


def machine() -> str:
    from realm.threads import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints/realm-demo"))
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per client")
    ap.add_argument("--levels", default="1,2,4,8,12,16,24,32,48,64")
    ap.add_argument("--workers", type=int, default=2, help="server model threads")
    ap.add_argument("--server-args", default="", help='more `realm serve` options, e.g. "--max-streams 64"')
    ap.add_argument("--p95-ms", type=float, default=50.0)
    ap.add_argument("--all", action="store_true", help="run every level, not just up to the first failure")
    ap.add_argument("--hostile", action="store_true", help="real-time clients alone, then beside attackers")
    ap.add_argument("--clients", type=int, default=8, help="real-time clients of --hostile")
    ap.add_argument("--attackers", default=",".join(ATTACKERS), help=f"those of --hostile, from {','.join(ATTACKERS)}")
    ap.add_argument("--browser", action="store_true", help="the listener page in headless Chromium, fake microphone")
    ap.add_argument("--repeat", type=int, default=3, help="streams of --browser")
    ap.add_argument("--attack", default=None, help=argparse.SUPPRESS)  # internal: the attacking process
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--force", action="store_true", help="Replace an existing output file.")
    args = ap.parse_args()
    from realm.io import refuse_output

    refuse_output(ap, args.json, args.force)
    if args.attack:
        print(json.dumps(asyncio.run(attack(args.attack, args.seconds, args.attackers.split(",")))), flush=True)
        return

    from realm.audio import load_audio

    y = load_audio(ROOT / "tests/data/jfk.flac")
    audio = np.resize(y, int(args.seconds * 16000)).astype(np.float32)
    levels = [int(x) for x in args.levels.split(",")]
    extra = ["--workers", str(args.workers)]
    if not args.hostile:
        extra += ["--max-clients", str(max(levels) + 1)]  # connections; streams stay at the measured capacity
    server = Server(args.checkpoint, extra + shlex.split(args.server_args))
    print(f"# python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}")
    print(f"# machine: {machine()}")
    print(f"# server: {' '.join(server.cmd[1:])}\n# {server.banner}")
    rng = np.random.default_rng(0)
    out: dict = {"command": sys.argv, "server": server.cmd, "machine": machine(), "banner": server.banner}
    try:
        asyncio.run(level(server.url, audio[:48000], 1, rng))  # warm-up
        base = rss_mb(server.pid)
        print(f"# server RSS with no client: {base:.0f} MB; {args.seconds:g} s of audio per client, real-time pace\n")
        if args.browser:
            out.update(browser(server, y, args))
        elif args.hostile:
            out.update(hostile(server, audio, args, rng))
        else:
            out.update(levels_run(server, audio, levels, args, rng, base))
    finally:
        out["server_totals"] = server.stop()
    print(f"\nserver: {out['server_totals']}")
    if args.json:
        from realm.io import write_json

        write_json(args.json, out, force=args.force)


def levels_run(server: Server, audio, levels, args, rng, base: float) -> dict:
    print("| clients | admitted | refused | frames | dropped | missing | p50 ms | p95 ms | max ms | server RSS MB | MB per client | CPU s / audio s | pass |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results, best = [], 0
    for n in levels:
        sampler = RssSampler(server.pid)
        sampler.start()
        cpu0 = _cpu_s(server.pid)
        t = time.perf_counter()
        rs = asyncio.run(level(server.url, audio, n, rng))
        wall = time.perf_counter() - t
        cpu = _cpu_s(server.pid) - cpu0
        sampler.running = False
        sampler.join()
        row = summarise(rs, n)
        k = max(1, row["admitted"])
        row.update(rss_mb=sampler.peak, mb_per_client=(sampler.peak - base) / k,
                   server_cpu_per_audio_s=cpu / (k * args.seconds), wall_s=wall)  # fmt: skip
        row["pass"] = row["p95_ms"] < args.p95_ms and row["dropped"] == 0 and row["missing"] == 0
        results.append(row)
        per = (lambda x, f: format(x, f)) if row["admitted"] else (lambda x, f: "-")
        print(
            f"| {n} | {row['admitted']} | {row['refused']} | {row['frames']} | {row['dropped']} | {row['missing']} | "
            f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['max_ms']:.1f} | {row['rss_mb']:.0f} | "
            f"{per(row['mb_per_client'], '.2f')} | {per(row['server_cpu_per_audio_s'], '.3f')} | {'yes' if row['pass'] else 'no'} |",
            flush=True,
        )
        if row["pass"] and not row["refused"]:
            best = max(best, n)
        elif not row["pass"] and not args.all:
            break
    print(f"\nlargest N with p95 added latency < {args.p95_ms:g} ms, no dropped frames and none refused: {best}")
    return {"levels": results, "best": best}


def _ms(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def browser(server: Server, speech: np.ndarray, args) -> dict:
    """The listener page in headless Chromium with jfk.flac as its microphone, ``--repeat`` streams."""
    import tempfile

    import soundfile as sf

    from realm.web.browser import Chromium

    q = lambda xs, k: float(np.percentile(xs, k)) if len(xs) else float("nan")  # noqa: E731
    page = server.url.replace("ws://", "http://") + "/"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        import librosa

        mic = Path(tmp) / "speech48.wav"
        sf.write(mic, librosa.resample(speech, orig_sr=16000, target_sr=48000), 48000, subtype="PCM_16")
        with Chromium(fake_audio=mic) as b:
            b.open(page)
            for k in range(args.repeat):
                b.evaluate("realm.start('mic')")
                time.sleep(args.seconds)
                st = b.evaluate("realm.stop().then(() => { const s = realm.state; return {end: s.end, ready: s.ready, "
                                "added: s.added, network: s.network, paint: s.paint, received: s.received, drawn: s.drawn, late: s.late, "
                                "skipped: s.skipped, chunks: s.chunks}; })", timeout_s=60)  # fmt: skip
                time.sleep(1.0)  # the last frames' play-out
                paint = st["paint"]
                row = {"stream": k, "frames": st["received"], "drawn": st["drawn"], "late": st["late"],
                       "not_drawn": st["skipped"], "dropped": st["end"]["dropped"] if st["end"] else None,
                       "net_p50": q(st["network"], 50), "net_p95": q(st["network"], 95),
                       "added_p50": q(st["added"], 50), "added_p95": q(st["added"], 95),
                       "paint_p50": q(paint, 50), "compute_p50": (st["end"] or {}).get("compute_ms_p50"),
                       "compute_p95": (st["end"] or {}).get("compute_ms_p95"),
                       "algorithmic_ms": 1e3 * st["ready"]["latency_s"]}  # fmt: skip
                rows.append(row)
            shot = Path(tmp) / "page.png"
            b.screenshot(shot)
            if args.json:
                Path(args.json).with_suffix(".png").write_bytes(shot.read_bytes())
    # capture -> send, which the page cannot time: a sample waits for its 20 ms chunk (10 ms on
    # average, 20 at most), the 128-sample render quantum at 48 kHz (2.7 ms) and the resampler's
    # 16 output samples of look-ahead (1 ms)
    capture = {"mean_ms": 10.0 + 2.7 + 1.0, "max_ms": 20.0 + 2.7 + 1.0}
    print("| stream | frames | drawn | late | not drawn | dropped | sent->received p50/p95 ms | received->paint p50 ms "
          "| added (sent->paint) p50/p95 ms | server compute p50/p95 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stream']} | {r['frames']} | {r['drawn']} | {r['late']} | {r['not_drawn']} | {r['dropped']} | "
              f"{r['net_p50']:.1f} / {r['net_p95']:.1f} | {r['paint_p50']:.1f} | {r['added_p50']:.1f} / {r['added_p95']:.1f} | "
              f"{_ms(r['compute_p50'])} / {_ms(r['compute_p95'])} |")  # fmt: skip
    print(f"\nalgorithmic latency {rows[0]['algorithmic_ms']:.0f} ms; capture -> send (not measurable in the page): "
          f"{capture['mean_ms']:.1f} ms on average, at most {capture['max_ms']:.1f}")
    return {"browser": rows, "capture_to_send": capture}


def hostile(server: Server, audio, args, rng) -> dict:
    t0 = time.perf_counter()
    sampler = RssSampler(server.pid, t0)
    sampler.start()
    phases = []
    cpu0, tq = _cpu_s(server.pid), time.perf_counter()
    quiet = summarise(asyncio.run(level(server.url, audio, args.clients, rng)), args.clients)
    quiet["server_cores"] = (_cpu_s(server.pid) - cpu0) / (time.perf_counter() - tq)
    phases.append(("quiet", 0.0, time.perf_counter() - t0))
    cmd = [sys.executable, __file__, "--attack", server.url, "--seconds", str(args.seconds + 4), "--attackers", args.attackers]
    attacker = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ta = time.perf_counter() - t0
    time.sleep(2.0)  # let the attack build up
    cpu0, tq, acpu0 = _cpu_s(server.pid), time.perf_counter(), _cpu_s(attacker.pid)
    loud = summarise(asyncio.run(level(server.url, audio, args.clients, rng)), args.clients)
    loud["server_cores"] = (_cpu_s(server.pid) - cpu0) / (time.perf_counter() - tq)
    loud["attacker_cores"] = (_cpu_s(attacker.pid) - acpu0) / (time.perf_counter() - tq)
    report = json.loads(attacker.communicate(timeout=120)[0].strip().splitlines()[-1])
    phases.append(("hostile", ta, time.perf_counter() - t0))
    time.sleep(3.0)  # after the attack: memory should come back
    sampler.running = False
    sampler.join()
    phases.append(("after", phases[-1][2], time.perf_counter() - t0))
    print(f"{args.clients} real-time clients, {args.seconds:g} s each, alone then beside the attackers\n")
    print("| phase | admitted | refused | frames | dropped | missing | p50 ms | p95 ms | max ms | server cores | attackers' cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in (("quiet", quiet), ("hostile", loud)):
        print(
            f"| {name} | {row['admitted']} | {row['refused']} | {row['frames']} | {row['dropped']} | {row['missing']} | "
            f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['max_ms']:.1f} | {row['server_cores']:.2f} | "
            f"{row.get('attacker_cores', 0):.2f} |"
        )
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(f"\np95 added by the attack: {loud['p95_ms'] - quiet['p95_ms']:+.1f} ms")
    print("\nserver RSS over time (MB; every 5 s):\n")
    print("| t s | phase | RSS MB |")
    print("|---|---|---|")
    for t, mb in sampler.samples[::10]:
        phase = next((p for p, a, b in phases if a <= t <= b), "")
        print(f"| {t:.0f} | {phase} | {mb:.0f} |")
    by = {p: [mb for t, mb in sampler.samples if a <= t <= b] for p, a, b in phases}
    print("\n" + "; ".join(f"{p}: peak {max(v):.0f} MB" for p, v in by.items() if v))
    print("\nattackers (connections, and how the server ended them: close code / error code):\n")
    print("| attacker | connections | ended by | notes |")
    print("|---|---|---|---|")
    for name, r in report.items():
        ends = ", ".join(f"{k} x{v}" for k, v in sorted(r["ends"].items()))
        print(f"| {name} | {r['connections']} | {ends} | {r.get('notes', '')} |")
    return {"quiet": quiet, "hostile": loud, "rss": sampler.samples, "phases": phases, "attackers": report}


# ---------------------------------------------------------------- the attackers (their own process)


ATTACKERS = ("idlers", "json", "audio", "errors", "deaf", "greedy")


async def attack(url: str, seconds: float, kinds=ATTACKERS) -> dict:
    """Attack ``url`` for ``seconds`` with ``kinds`` of ATTACKERS; per attacker: connections made and how each ended."""
    import socket

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from realm.audio import load_audio
    from realm.serve import encode_pcm16, listen_async

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    report: dict = {}
    host, port = url.split("//")[1].rsplit(":", 1)
    pcm = encode_pcm16(np.resize(load_audio(ROOT / "tests/data/jfk.flac"), 16000 * 30))

    def entry(name):
        return report.setdefault(name, {"connections": 0, "ends": Counter(), "notes": ""})

    async def session(name: str, body, deaf: bool = False):
        """Repeat: connect, run ``body(ws)`` (reading everything unless ``deaf``) until the server closes
        the connection or time is up; note how it ended (close code and the last error code); reconnect 0.5 s later."""
        r = entry(name)
        while loop.time() < deadline:
            last: dict = {}
            try:
                kw = {}
                if deaf:  # a tiny receive buffer, a tiny queue, and no reads
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.connect((host, int(port)))
                    kw = {"sock": s, "max_queue": 1}
                async with connect(url, open_timeout=10, max_size=None, **kw) as ws:
                    r["connections"] += 1
                    tasks = [asyncio.create_task(body(ws))] + ([] if deaf else [asyncio.create_task(read(ws, last))])
                    done, pending = await asyncio.wait(
                        tasks, timeout=max(0.1, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in pending:
                        task.cancel()
                    for task in done:  # ConnectionClosed from a send: the code is read below
                        if not task.cancelled():
                            task.exception()
                    if done:
                        try:
                            await asyncio.wait_for(ws.wait_closed(), 5)
                        except (asyncio.TimeoutError, TimeoutError):
                            pass
                    code = ws.close_code if done else None
                r["ends"][f"{code} {last.get('code', '')}".strip() if code else "deadline"] += 1
            except InvalidStatus as e:
                r["ends"][f"HTTP {e.response.status_code}"] += 1
            except (OSError, ConnectionClosed, asyncio.TimeoutError, TimeoutError) as e:
                r["ends"][type(e).__name__] += 1
            await asyncio.sleep(0.5)

    async def read(ws, last):
        """Read everything; remember the last error code."""
        try:
            async for text in ws:
                msg = json.loads(text)
                if msg.get("type") == "error":
                    last["code"] = msg["code"]
        except ConnectionClosed:
            pass

    async def idle(ws):  # never send start
        await asyncio.sleep(1e9)

    async def flood_json(ws):  # `{}` as fast as the server takes it
        while True:
            await ws.send("{}")
            await asyncio.sleep(0)  # (let this process's other attackers run too)

    async def flood_audio(ws):  # a valid stream of 2-byte audio messages
        await ws.send(json.dumps({"type": "start"}))
        while True:
            await ws.send(b"\x00\x00")
            await asyncio.sleep(0)

    async def big_errors(ws):  # 30 KB bad messages, never reading the replies
        while True:
            await ws.send("[" + "x" * 30000)
            await asyncio.sleep(0)

    async def deaf_stream(ws):  # audio at 4x real time, never reading the frames
        await ws.send(json.dumps({"type": "start"}))
        k = 0
        while True:
            await ws.send(pcm[k : k + 3200])
            k = (k + 3200) % len(pcm)
            await asyncio.sleep(0.025)

    async def greedy(name):  # `realm listen` without --realtime, over and over (10 s of audio each)
        r = entry(name)
        frames, busy = 0, 0.0
        y = np.frombuffer(pcm, "<i2").astype(np.float32)[: 16000 * 10] / 32768
        while loop.time() < deadline:
            r["connections"] += 1
            try:
                t = loop.time()
                res = await asyncio.wait_for(listen_async(url, y, realtime=False), max(0.1, deadline - loop.time()))
                frames, busy = frames + res.received, busy + loop.time() - t
                r["ends"]["1000 end"] += 1
            except (asyncio.TimeoutError, TimeoutError):
                r["ends"]["deadline"] += 1
            except Exception as e:  # refused
                r["ends"][type(e).__name__ + ": " + str(e)[:60]] += 1
                await asyncio.sleep(0.5)
        r["notes"] = f"{frames / 30 / busy:.1f}x real time" if busy else "no stream finished"

    tasks = []
    if "idlers" in kinds:
        tasks += [session(f"idler {k}", idle) for k in range(40)]
    if "json" in kinds:
        tasks += [session(f"json flooder {k}", flood_json) for k in range(2)]
    if "audio" in kinds:
        tasks += [session("audio flooder", flood_audio)]
    if "errors" in kinds:
        tasks += [session("30 KB errors, never reads", big_errors, deaf=True)]
    if "deaf" in kinds:
        tasks += [session(f"4x stream, never reads {k}", deaf_stream, deaf=True) for k in range(2)]
    if "greedy" in kinds:
        tasks += [greedy(f"as fast as possible {k}") for k in range(2)]
    await asyncio.gather(*tasks)
    if "idlers" in kinds:
        idlers = [report.pop(f"idler {k}") for k in range(40)]
        report["40 idlers"] = {
            "connections": sum(r["connections"] for r in idlers),
            "ends": sum((r["ends"] for r in idlers), Counter()),
        }
    for r in report.values():
        r["ends"] = dict(r["ends"])
    return report


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


if __name__ == "__main__":
    main()
