"""imrelay ingress: verifies, decrypts and normalizes platform callbacks and stores them in JetStream."""
