// Audio-thread side of the capture: posts each render quantum of mono Float32 samples to the page.
// The node is created with channelCount 1 / "explicit", so Web Audio has already down-mixed the input.
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) {
      const copy = channel.slice(); // the audio engine reuses its buffers: send a copy, transferred
      this.port.postMessage(copy, [copy.buffer]);
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
