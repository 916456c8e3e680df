"""The configuration ``imrelay dev`` uses when none is given: one bot per platform, answered by the echo
backend, every platform API played by the local simulator. The credentials are made up for local use
only (the Discord public key belongs to the simulator's built-in demo signing seed)."""

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
  - id: demo-robot
    platform: wecom_group_robot
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {token: demorobot, encoding_aes_key: GFEDCBA9876543210zyxwvutsrqponmlkjihgfedcba}
  - id: demo-aibot
    platform: wecom_aibot
    credentials: {token: demoaibot, encoding_aes_key: aibotdemo0123456789abcdefghijklmnopqrstuvwx}
  - id: demo-aibot-ws
    platform: wecom_aibot
    mode: long_connection            # served by imrelay-connector over the simulator's WebSocket
    ws_url: ${IMRELAY_SIM_WS_URL:-ws://127.0.0.1:8090/ws/aibot}
    credentials: {token: demoaibotws, encoding_aes_key: aibotdemo0123456789abcdefghijklmnopqrstuvwx,
                  bot_id: aibDemoLongConn, secret: demo-aibot-secret}
  - id: demo-feishu
    platform: feishu
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_id: cli_demo0001, app_secret: demo-secret, encrypt_key: demo-encrypt-key,
                  verification_token: demo-verification-token}
  - id: demo-lark
    platform: lark
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_id: cli_demo0002, app_secret: demo-secret, encrypt_key: demo-lark-encrypt-key,
                  verification_token: demo-lark-token}
  - id: demo-dingtalk
    platform: dingtalk
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_key: dingdemo0001, app_secret: demo-dingtalk-secret}
  - id: demo-qq
    platform: qq
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    auth_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_id: "102030405", app_secret: demoqqsecret01234567}
  - id: demo-discord
    platform: discord
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {application_id: "100000000000000001", bot_token: demo-bot-token,
                  public_key: 7b5e10d4ba33abe2ff7dec86cf4de3c0a9175860412afa49313167450d3008c5}
"""
