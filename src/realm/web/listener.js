// realm listener page: capture speech (microphone or a file), stream it to `realm serve` on this
// page's host and port, and draw the listener's face and robot controls live.
//
// Protocol: docs/serving.md (start with {"face": true}: each frame then carries the face's shapes,
// computed by realm.render.face on the server; this page only fills and strokes them).
// Timing: every audio chunk's send time is kept; a frame names the chunk that completed it, so
// "chunk sent -> frame received" (compute + network) and "-> first paint after it" (added latency)
// are exact. Frames are shown on a play-out clock: frame i at the capture time of audio sample 0
// + the model's algorithmic latency + `margin` + i / fps, so the face moves smoothly; a frame that
// arrives after its time is drawn at once and counted late.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const MARGIN_S = parseFloat(params.get("margin") || "0.1"); // play-out margin over the algorithmic latency
  const CHUNK = 320; // samples per audio message (20 ms at 16 kHz)
  const $ = (id) => document.getElementById(id);

  const state = {
    running: false, ready: null, face: null, frames: [], received: 0, drawn: 0, late: 0, skipped: 0,
    sentAt: [], chunks: 0, samples: 0, t0: null, added: [], network: [], paint: [], end: null, error: null,
    canvasChanges: 0, log: [], words: [],
  };
  let ws = null, audio = null, queue = [], endWaiter = null;

  function say(text) { $("status").textContent = text; state.log.push(text); }

  function wsURL() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const token = params.get("token");
    return `${proto}//${location.host}/` + (token ? `?token=${encodeURIComponent(token)}` : "");
  }

  function quantile(xs, q) {
    if (!xs.length) return NaN;
    const s = [...xs].sort((a, b) => a - b);
    const k = (s.length - 1) * q, lo = Math.floor(k), hi = Math.ceil(k);
    return s[lo] + (s[hi] - s[lo]) * (k - lo);
  }

  // ---------------------------------------------------------------- drawing (as realm.render.face.draw_face)

  function decodePoints(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
    return new Int16Array(bytes.buffer); // little-endian, as every browser platform is
  }

  function drawFace(canvas, shapes) {
    const g = canvas.getContext("2d"), d = state.face;
    const w = canvas.width, h = canvas.height;
    g.fillStyle = "rgb(232,236,242)";
    g.fillRect(0, 0, w, h);
    if (!shapes || !d) return;
    const cx = w * d.centre[0], cy = h * d.centre[1], s = Math.min(w / d.fit[0], h / d.fit[1]);
    const pts = decodePoints(shapes.p), u = d.units;
    const rgb = (i) => `rgb(${d.palette[i].join(",")})`;
    let at = 0;
    for (let j = 0; j < shapes.k.length; j++) {
      const n = shapes.n[j];
      g.beginPath();
      for (let k = 0; k < n; k++) {
        const x = cx + (s * pts[2 * (at + k)]) / u, y = cy - (s * pts[2 * (at + k) + 1]) / u;
        if (k === 0) g.moveTo(x, y); else g.lineTo(x, y);
      }
      at += n;
      const width = Math.max(0.5, (shapes.w[j] / u) * s); // Pillow: >= 1 px at FaceRenderer's 2x supersampling
      g.lineJoin = "round";
      g.lineCap = "butt";
      if (shapes.k[j] === "p") {
        g.closePath();
        if (shapes.f[j] >= 0) { g.fillStyle = rgb(shapes.f[j]); g.fill(); }
        if (shapes.o[j] >= 0) { // Pillow draws a polygon's outline inside it: a centred stroke twice as wide, clipped
          g.save();
          g.clip();
          g.strokeStyle = rgb(shapes.o[j]);
          g.lineWidth = 2 * width;
          g.stroke();
          g.restore();
        }
      } else if (shapes.o[j] >= 0) {
        g.strokeStyle = rgb(shapes.o[j]);
        g.lineWidth = width;
        g.stroke();
      }
    }
    state.canvasChanges++;
  }

  function buildBars(ready) {
    const box = $("bars");
    box.innerHTML = "";
    if (!ready.controls) return;
    ready.controls.forEach((name, k) => {
      const label = document.createElement("div");
      label.textContent = name;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.innerHTML = '<div class="fill"></div><div class="neutral"></div>';
      const [lo, hi] = ready.control_ranges ? ready.control_ranges[k] : [0, 1];
      const neutral = ready.control_neutral ? ready.control_neutral[k] : lo;
      bar.querySelector(".neutral").style.left = `${(100 * (neutral - lo)) / (hi - lo || 1)}%`;
      bar.dataset.lo = lo; bar.dataset.hi = hi;
      box.append(label, bar);
    });
  }

  function drawBars(controls) {
    if (!controls) return;
    const bars = $("bars").querySelectorAll(".bar");
    controls.forEach((v, k) => {
      const b = bars[k];
      if (!b) return;
      const lo = +b.dataset.lo, hi = +b.dataset.hi;
      b.firstChild.style.width = `${Math.max(0, Math.min(100, (100 * (v - lo)) / (hi - lo || 1)))}%`;
    });
  }

  function showReadout() {
    const ms = (x) => (Number.isFinite(x) ? `${x.toFixed(0)} ms` : "–");
    $("lat").textContent = `${ms(quantile(state.added, 0.5))} / ${ms(quantile(state.added, 0.95))}`;
    $("net").textContent = `${ms(quantile(state.network, 0.5))} / ${ms(quantile(state.network, 0.95))}`;
    if (state.ready) {
      $("algo").textContent = ms(1e3 * state.ready.latency_s);
      $("delay").textContent = ms(1e3 * (state.ready.latency_s + MARGIN_S));
    }
    $("frames").textContent = `${state.received} / ${state.drawn}`;
    $("drops").textContent = `${state.late} / ${state.skipped} / ${state.end ? state.end.dropped : "–"}`;
    $("audio").textContent = `${(state.samples / 16000).toFixed(1)} s in ${state.chunks} chunks`;
    if (state.end) $("compute").textContent = `${ms(state.end.compute_ms_p50)} / ${ms(state.end.compute_ms_p95)}`;
  }

  // ---------------------------------------------------------------- play-out

  function dueTime(i) { // page time (ms) at which frame i is shown
    return state.t0 + 1e3 * (state.ready.latency_s + MARGIN_S + i / state.ready.fps);
  }

  let ticking = false;

  function kick() { // run the paint loop while streaming or while frames wait to be shown
    if (!ticking) { ticking = true; requestAnimationFrame(tick); }
  }

  function tick() {
    const now = performance.now(); // (the animation frame's own timestamp can precede a message received in it)
    // latency of frames that arrived since the last paint: this paint is the first they could be in
    for (const f of queue) {
      if (f.painted === undefined) {
        f.painted = now;
        state.paint.push(now - f.received); // frame received -> the first paint it could be in
        if (f.chunk >= 0 && state.sentAt[f.chunk] !== undefined) state.added.push(now - state.sentAt[f.chunk]);
      }
    }
    let show = null;
    while (queue.length && dueTime(queue[0].i) <= now) {
      if (show) state.skipped++; // two frames due within one paint: the older is never shown
      show = queue.shift();
    }
    if (show) {
      if (show.face) drawFace($("face"), show.face); // a held frame (no face) keeps the face drawn last
      drawBars(show.controls);
      state.drawn++;
    }
    showReadout();
    ticking = false;
    if (state.running || queue.length) kick();
  }

  // ---------------------------------------------------------------- the stream

  function onMessage(ev) {
    const now = performance.now();
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg.type === "ready") {
      state.ready = msg;
      state.face = msg.face || null;
      buildBars(msg);
      $("heard").hidden = !msg.asr;
      if (readyWaiter) readyWaiter(msg);
    } else if (msg.type === "frame") {
      state.received++;
      if (msg.chunk >= 0 && state.sentAt[msg.chunk] !== undefined) state.network.push(now - state.sentAt[msg.chunk]);
      state.frames.push({ i: msg.i, chunk: msg.chunk, motion: msg.motion, controls: msg.controls || null });
      const f = { i: msg.i, chunk: msg.chunk, face: msg.face, controls: msg.controls, received: now };
      if (state.t0 !== null && dueTime(msg.i) < now) state.late++;
      queue.push(f);
    } else if (msg.type === "words") {
      state.words.push(...msg.words);
      $("words").textContent = state.words.slice(-24).map((w) => w.word).join(" ");
    } else if (msg.type === "end") {
      state.end = msg;
      showReadout();
      if (endWaiter) endWaiter(msg);
    } else if (msg.type === "error") {
      state.error = msg;
      say(`server: ${msg.code}: ${msg.message}`);
    }
  }

  let readyWaiter = null;

  async function connect() {
    ws = new WebSocket(wsURL());
    ws.binaryType = "arraybuffer";
    ws.onmessage = onMessage;
    ws.onclose = (e) => {
      if (state.running) say(`connection closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
      if (state.running) teardown();
    };
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("cannot connect to the server (is it running? does it want ?token=...)"));
    });
    const ready = new Promise((resolve) => { readyWaiter = resolve; });
    // asr: a model that reads words (the multimodal-LM listener) gets them from the server's streaming ASR
    ws.send(JSON.stringify({ type: "start", face: true, pace: "asap", asr: true }));
    return ready;
  }

  async function openAudio(source, file) {
    const ctx = new AudioContext({ latencyHint: "interactive" });
    await ctx.audioWorklet.addModule("capture-worklet.js");
    const node = new AudioWorkletNode(ctx, "realm-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { targetRate: state.ready.sample_rate, chunk: CHUNK },
    });
    node.connect(ctx.destination); // outputs silence; keeps the node pulled by the graph
    let input, stream = null;
    if (source === "mic") {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      input = ctx.createMediaStreamSource(stream);
    } else {
      const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
      input = ctx.createBufferSource();
      input.buffer = buffer;
      if ($("hear").checked) input.connect(ctx.destination);
      input.onended = () => stop();
    }
    input.connect(node);
    node.port.onmessage = (e) => {
      if (!ws || ws.readyState !== WebSocket.OPEN || !state.running) return;
      const now = performance.now();
      const n = e.data.pcm.byteLength / 2;
      if (state.t0 === null) state.t0 = now - (1e3 * n) / state.ready.sample_rate; // capture time of sample 0
      ws.send(e.data.pcm);
      state.sentAt[state.chunks++] = now;
      state.samples += n;
    };
    if (source !== "mic") input.start();
    await ctx.resume();
    return { ctx, node, input, stream };
  }

  async function start(source, file) {
    if (state.running) return;
    Object.assign(state, {
      running: true, ready: null, frames: [], received: 0, drawn: 0, late: 0, skipped: 0, sentAt: [], chunks: 0,
      samples: 0, t0: null, added: [], network: [], paint: [], end: null, error: null, words: [],
    });
    $("words").textContent = "";
    queue = [];
    $("mic").disabled = true; $("stop").disabled = false;
    try {
      await connect();
      audio = await openAudio(source, file);
      say(source === "mic" ? "listening to the microphone…" : `playing ${file.name}…`);
      kick();
    } catch (e) {
      say(String(e.message || e));
      teardown();
      if (ws) { ws.close(); ws = null; } // a stream the server started is not left running
      throw e;
    }
  }

  function teardown() {
    state.running = false;
    if (audio) {
      if (audio.stream) audio.stream.getTracks().forEach((t) => t.stop());
      audio.ctx.close();
      audio = null;
    }
    $("mic").disabled = false; $("stop").disabled = true;
  }

  async function stop() {
    if (!state.running) return state.end;
    const done = new Promise((resolve) => { endWaiter = resolve; });
    if (audio) {
      audio.node.port.postMessage({ flush: true }); // the last partial chunk
      await new Promise((r) => setTimeout(r, 50));
    }
    teardown();
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "stop" }));
      const end = await Promise.race([done, new Promise((r) => setTimeout(() => r(null), 10000))]);
      ws.close();
      say(end ? `stopped: ${end.frames} frames` : "stopped (no end from the server)");
    }
    kick(); // show what is left
    return state.end;
  }

  // ---------------------------------------------------------------- page wiring

  $("mic").onclick = () => start("mic").catch(() => {});
  $("stop").onclick = () => stop();
  $("file").onchange = (e) => { if (e.target.files[0]) start("file", e.target.files[0]).catch(() => {}); };
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("drop"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("drop"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("drop");
    const f = e.dataTransfer.files[0];
    if (f) start("file", f).catch(() => {});
  });
  drawFace($("face"), null);

  // for tests and scripts (realm.web.browser drives the page through this)
  window.realm = { start, stop, state, drawFace, quantile };
})();
