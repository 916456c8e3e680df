"""The configuration ``imrelay dev`` uses when none is given: the demo bots every platform's package
declares, answered by the echo backend, every platform API played by the local simulator. The credentials
are made up for local use only."""

from . import platforms

_HEADER = """\
# imrelay development config (written by `imrelay dev`; edit freely or point IMRELAY_CONFIG elsewhere)
nats:
  url: nats://127.0.0.1:4222        # replaced by the embedded server's address
backends:
  default:
    kind: echo                      # answers with the user's own words; no network, no key
media:
  allow_private_networks: ["127.0.0.0/8"]   # the simulator serves the users' files on this machine
bots:
"""

DEV_CONFIG = _HEADER + "".join(spec.demo for spec in platforms.SPECS)
