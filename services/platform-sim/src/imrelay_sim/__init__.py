"""imrelay platform simulator: a local fake of the chat platforms' APIs and a callback signer."""
