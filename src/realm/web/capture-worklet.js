// realm listener page: the audio capture worklet. Runs on the audio thread; mixes its input to
// mono, resamples it from the context's rate to the server's 16 kHz with a windowed-sinc low-pass
// (cut-off 7.2 kHz, Blackman window, 16 output-rate samples each side), and posts 16-bit PCM to
// the page in chunks of `chunk` samples (20 ms by default). {flush: true} posts what is left.
"use strict";

class RealmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.rate = o.targetRate || 16000;
    this.chunk = o.chunk || 320;
    this.ratio = sampleRate / this.rate; // input samples per output sample
    this.fc = (0.45 * this.rate) / sampleRate; // cut-off in cycles per input sample (0.9 x the output Nyquist)
    this.half = Math.ceil(16 * Math.max(1, this.ratio)); // kernel half-width, input samples
    this.buf = new Float32Array(4096);
    this.len = this.half; // `half` zeros before the first sample
    this.pos = this.half; // input position of the next output sample
    this.out = new Int16Array(this.chunk);
    this.n = 0;
    this.sent = 0; // samples posted so far
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.flush) {
        this.post(true);
        this.running = false;
      }
    };
  }

  append(x) {
    if (this.len + x.length > this.buf.length) {
      const grown = new Float32Array(Math.max(this.buf.length * 2, this.len + x.length));
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(x, this.len);
    this.len += x.length;
  }

  kernel(d) {
    // windowed sinc at distance d (input samples) from the output position
    const a = Math.abs(d);
    if (a >= this.half) return 0;
    const x = 2 * this.fc * d;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = 0.42 + 0.5 * Math.cos((Math.PI * d) / this.half) + 0.08 * Math.cos((2 * Math.PI * d) / this.half);
    return sinc * w;
  }

  post(partial) {
    if (this.n === 0 || (!partial && this.n < this.chunk)) return;
    const pcm = this.out.slice(0, this.n);
    this.port.postMessage({ pcm: pcm.buffer, first: this.sent, time: currentTime }, [pcm.buffer]);
    this.sent += this.n;
    this.n = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const frames = input[0].length;
    const mono = new Float32Array(frames);
    for (const ch of input) for (let k = 0; k < frames; k++) mono[k] += ch[k] / input.length;
    this.append(mono);
    const H = this.half;
    while (Math.floor(this.pos) + H < this.len) {
      const p = this.pos;
      const k0 = Math.floor(p) - H + 1;
      let acc = 0;
      let norm = 0;
      for (let k = k0; k <= Math.floor(p) + H; k++) {
        const w = this.kernel(p - k);
        acc += w * this.buf[k];
        norm += w;
      }
      const y = Math.max(-1, Math.min(1, acc / norm));
      this.out[this.n++] = Math.max(-32768, Math.min(32767, Math.round(y * 32768))); // as realm.serve.encode_pcm16
      if (this.n === this.chunk) this.post(false);
      this.pos += this.ratio;
    }
    const drop = Math.floor(this.pos) - H + 1; // samples no output will read again
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
    return true;
  }
}

registerProcessor("realm-capture", RealmCapture);
