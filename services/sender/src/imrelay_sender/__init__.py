"""imrelay sender: owns platform tokens, limits, splitting, retries, dead letters and delivery."""
