"""CLI commands of one area: `realm serve` (live WebSocket server) and `realm listen` (its client)."""

from __future__ import annotations

from pathlib import Path

import typer

from realm.cli.common import (
    app,
    console,
    friendly,
    out,
)


@app.command("serve")
@friendly
def serve_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A streaming run: REALM (logmel, logmel_norm, logmel_prosody, vico45, prosody features) or the multimodal-LM listener (send words as they are recognised)."),
    profile: str = typer.Option(None, help="Robot profile (ameca, neck3 or a YAML path): adds safe robot controls to each frame."),
    map_path: Path = typer.Option(None, "--map", help="Linear map to arkit58 when the checkpoint's spec is not arkit58."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default; any other host, e.g. 0.0.0.0, needs --token)."),
    port: int = typer.Option(8765, help="TCP port (0: any free port)."),
    token: str = typer.Option(None, "--token", envvar="REALM_SERVE_TOKEN", help="Clients must send it (Authorization: Bearer TOKEN, or ?token=TOKEN); required unless --host is loopback."),
    allow_origin: list[str] = typer.Option([], "--allow-origin", help="Browser Origin admitted besides localhost pages (repeatable; * for any). Clients without an Origin header (not browsers) are always admitted."),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate (chain): serve wss:// (with --tls-key)."),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    max_clients: int = typer.Option(128, "--max-clients", help="Connections at once, streaming or not; beyond, the oldest without a stream is closed, or the new one refused (server_full, 1013)."),
    max_streams: int = typer.Option(0, "--max-streams", help="Streams at once (0: the measured capacity, see --load-target); a start beyond is refused (server_full, 1013)."),
    load_target: float = typer.Option(0.5, "--load-target", help="Share of the model threads' cores that real-time streams may fill: the capacity is this x cores / the measured load of one stream."),
    ahead_share: float = typer.Option(0.25, "--ahead-share", help="Share of one core for audio a client sends ahead of real time (as-fast-as-possible clients); real-time clients go first (0: none early)."),
    max_lag: float = typer.Option(0.1, "--max-lag", help="No new stream while real-time clients' model calls take longer than this many seconds from audio to frames (p95 over 5 s; 0: no such check)."),
    max_pending: int = typer.Option(64, "--max-pending", help="Connections that have not sent start; a new one beyond closes the one that waited longest."),
    start_timeout: float = typer.Option(10.0, "--start-timeout", help="Seconds a connection has to send start (0: no limit)."),
    idle_timeout: float = typer.Option(60.0, "--idle-timeout", help="A connection that sends nothing for this many seconds is closed (0: never)."),
    max_msgs_per_s: float = typer.Option(200.0, "--max-msgs-per-s", help="Messages per second per client (0: no limit); faster clients are read later."),
    max_flood: float = typer.Option(5.0, "--max-flood", help="A client over --max-msgs-per-s this many seconds without a quarter-second pause is closed (0: only slowed down)."),
    max_bytes_per_s: float = typer.Option(320_000.0, "--max-bytes-per-s", help="Bytes per second per client (0: no limit); the default is 10x real-time audio."),
    max_errors: int = typer.Option(100, "--max-errors", help="Bad messages per connection before it is closed (0: no limit)."),
    queue_frames: int = typer.Option(90, "--queue-frames", help="Outgoing frames kept per client; older ones are dropped."),
    queue_messages: int = typer.Option(32, "--queue-messages", help="Other outgoing messages kept per client: errors beyond are dropped, others close the connection."),
    max_chunk_s: float = typer.Option(1.0, "--max-chunk-s", help="Largest audio message, in seconds."),
    workers: int = typer.Option(2, help="Model threads shared by all clients."),
    robot: str = typer.Option(None, "--robot", help="Drive a robot: tritium://HOST[:PORT] (an Engineered Arts Tritium gateway) gets the streaming session's safe controls at the frame rate (needs --profile; docs/serving.md)."),
    robot_channel: str = typer.Option("realm_controls", "--robot-channel", help="Tritium channel the robot's script reads."),
    robot_token: str = typer.Option(None, "--robot-token", envvar="TRITIUM_AUTH_TOKEN", help="The gateway's access token (JWT)."),
    page: bool = typer.Option(True, "--page/--no-page", help="Serve the listener page (microphone or file, the face drawn live) at http://HOST:PORT/."),
    record: Path = typer.Option(None, "--record", help="Keep each stream's received audio as DIR/stream-<client>-<n>.wav (what the server heard, to replay offline)."),
):
    """Serve listener frames (and robot controls) over WebSocket to live audio streams (docs/serving.md)."""
    import asyncio
    import signal

    import realm
    from realm.serve import ListenerServer, ServerConfig

    linear_map = None
    if map_path is not None:
        from realm.embodiment.retarget import LinearMap

        linear_map = LinearMap.load(map_path)
    cfg = ServerConfig(
        host=host, port=port, token=token, allowed_origins=tuple(allow_origin),
        tls_cert=str(tls_cert) if tls_cert else None, tls_key=str(tls_key) if tls_key else None,
        max_clients=max_clients, max_streams=max_streams, load_target=load_target, ahead_share=ahead_share, max_lag_s=max_lag,
        max_pending=max_pending,
        start_timeout_s=start_timeout, idle_timeout_s=idle_timeout, max_msgs_per_s=max_msgs_per_s, max_flood_s=max_flood,
        max_bytes_per_s=max_bytes_per_s, max_errors=max_errors, queue_frames=queue_frames,
        queue_messages=queue_messages, max_chunk_s=max_chunk_s, workers=workers, page=page,
        record_dir=str(record) if record else None,
    )  # fmt: skip
    server = ListenerServer(realm.load(checkpoint), profile=profile, linear_map=linear_map, config=cfg, robot=robot,
                            robot_channel=robot_channel, robot_token=robot_token)  # fmt: skip

    async def main():
        await server.start()
        sp = server.listener.spec
        out.print(
            f"serving {checkpoint} ({sp.name}, {server.listener.fps:g} fps"
            + (f", robot profile {server.profile.name}" if server.profile else "")
            + (f", driving the robot at {server.robot.streamer.url}" if server.robot else "")
            + f") on {server.url}; algorithmic latency {1e3 * server.latency_s:.0f} ms; "
            f"capacity {server.capacity} streams ({server.load:.3f} cores each); Ctrl-C stops"
        )
        if page:
            web = server.url.replace("ws", "http", 1).replace("0.0.0.0", "127.0.0.1")
            out.print(f"the listener page: {web}/" + ("?token=TOKEN" if token else "") + " (microphone or an audio file)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        n = len(server.sessions)
        await server.close()
        t = server.totals
        out.print(
            f"stopped ({n} clients closed); served {t['clients']} clients, {t['frames']} frames, {t['dropped']} dropped; "
            f"refused {t['refused']}, closed {t['closed']}, {t['errors']} bad messages, {t['throttled']} throttled"
        )

    try:
        asyncio.run(main())
    except OSError as e:  # port in use, bad interface
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@app.command("listen")
@friendly
def listen_cmd(
    server: str = typer.Option("ws://127.0.0.1:8765", "--server", help="WebSocket URL of `realm serve`."),
    audio: Path = typer.Option(None, "--audio", "-a", help="Speaker audio (any format; sent as 16 kHz 16-bit PCM)."),
    mic: bool = typer.Option(False, "--mic", help="Stream the microphone instead of a file (needs sounddevice and PortAudio)."),
    seconds: float = typer.Option(None, "--seconds", help="With --mic: stop after this long (default: Ctrl-C stops)."),
    device: str = typer.Option(None, "--device", help="With --mic: the input device (index or name; default: the system's)."),
    out_path: Path = typer.Option(None, "--out", "-o", help="Write what came back (.npz: listener, spec, fps, controls, latency_s)."),
    realtime: bool = typer.Option(False, "--realtime", help="Send at real-time pace (default: as fast as possible)."),
    chunk_ms: float = typer.Option(100.0, "--chunk-ms", help="Audio per message, in ms."),
    seed: int = typer.Option(0, help="Seed of the refinement noise."),
    pace: str = typer.Option("asap", help="Server pacing of frames: asap | realtime (each frame at its play time)."),
    late_ms: float = typer.Option(100.0, "--late-ms", help="A frame counts as late when it arrives this long after its chunk was sent."),
    token: str = typer.Option(None, "--token", envvar="REALM_SERVE_TOKEN", help="The server's token (sent as Authorization: Bearer TOKEN)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Stream an audio file or the microphone to `realm serve`, record the frames and print latency statistics."""
    import asyncio

    from realm.audio import input_device, load_audio, microphone_chunks
    from realm.serve import listen, listen_async, save_listen

    if out_path is not None and out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    if mic == (audio is not None):
        raise ValueError("give --audio FILE or --mic (one of them)")
    dev = int(device) if device is not None and device.isdigit() else device
    opts = {"seed": seed, "pace": pace}
    from websockets.exceptions import WebSocketException

    try:
        if mic:
            name = input_device(dev).get("name", "microphone")  # no input device: one line, before connecting
            how = f"for {seconds:g} s" if seconds else "until Ctrl-C"
            with console.status(f"streaming the microphone ({name}) to {server} {how}"):
                try:
                    r = asyncio.run(listen_async(server, microphone_chunks(seconds, chunk_ms, dev), chunk_ms=chunk_ms,
                                                 options=opts, token=token))  # fmt: skip
                except KeyboardInterrupt:
                    raise ValueError("stopped before the server's end message (use --seconds to stop cleanly)") from None
        else:
            y = load_audio(audio)
            with console.status(f"streaming {len(y) / 16000:.1f} s of audio to {server}" + (" at real-time pace" if realtime else "")):
                r = listen(server, y, realtime=realtime, chunk_ms=chunk_ms, options=opts, token=token)
    except (OSError, WebSocketException) as e:
        raise ValueError(f"{server}: cannot connect or connection lost ({getattr(e, 'strerror', None) or e})") from None
    for err in r.errors:
        console.print(f"[yellow]server error[/yellow] {err.get('code')}: {err.get('message')}")
    s = r.stats(late_ms)
    out.print(
        f"{s['frames']}/{s['expected']} frames ({r.ready['spec']}, {r.ready['fps']:g} fps); "
        f"dropped {s['dropped']}, missing {s['missing']}, late (> {late_ms:g} ms) {s['late']}"
    )
    out.print(
        f"latency chunk sent -> frame received: p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
        f"max {s['max_ms']:.1f} ms (on top of the model's algorithmic latency {s['algorithmic_latency_ms']:.0f} ms)"
    )
    if out_path is not None:
        save_listen(r, out_path, audio="microphone" if mic else str(audio), force=force)
        out.print(f"wrote {out_path}")
