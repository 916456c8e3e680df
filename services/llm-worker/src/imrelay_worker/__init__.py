"""imrelay llm-worker: consumes inbound events, calls each bot's backend, streams reply chunks."""
