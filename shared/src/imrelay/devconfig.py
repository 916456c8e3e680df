"""The configuration ``imrelay dev`` uses when none is given: one WeCom app bot answered by the echo
backend, its API played by the local simulator. The credentials are made up for local use only."""

DEV_CONFIG = """\
# imrelay development config (written by `imrelay dev`; edit freely or point IMRELAY_CONFIG elsewhere)
nats:
  url: nats://127.0.0.1:4222        # replaced by the embedded server's address
backends:
  default:
    kind: echo                      # answers with the user's own words; no network, no key
bots:
  - id: demo
    platform: wecom_app
    backend: default
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}   # the simulator plays qyapi.weixin.qq.com
    credentials:
      corp_id: wwdemo0000000000001
      agent_id: "1000002"
      secret: ${DEMO_WECOM_SECRET:-demo-secret-not-for-production}
      token: ${DEMO_WECOM_TOKEN:-demotoken}
      encoding_aes_key: ${DEMO_WECOM_AES_KEY:-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG}
"""
