{{- /* Generated from shared/src/imrelay/permissions.py by `imrelay nats permissions --chart`; a test fails when they differ. */ -}}
{{- define "nats.imrelayAuthorization" -}}
authorization {
  users = [
  {
    "user": "imrelay-ingress",
    "password": $IMRELAY_NATS_PASSWORD_INGRESS,
    "permissions": {
      "publish": {
        "allow": [
          "imrelay.in.>",
          "$JS.API.STREAM.INFO.IMRELAY_IN",
          "$JS.API.STREAM.CREATE.IMRELAY_IN",
          "$JS.API.STREAM.INFO.IMRELAY_OUT",
          "$JS.API.STREAM.CREATE.IMRELAY_OUT",
          "$JS.API.STREAM.INFO.IMRELAY_DLQ",
          "$JS.API.STREAM.CREATE.IMRELAY_DLQ",
          "$KV.imrelay_streams.>",
          "$JS.API.STREAM.INFO.KV_imrelay_streams",
          "$JS.API.STREAM.CREATE.KV_imrelay_streams",
          "$JS.API.DIRECT.GET.KV_imrelay_streams.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_streams",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_streams",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_streams.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_streams.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_streams.>",
          "$KV.imrelay_replay.>",
          "$JS.API.STREAM.INFO.KV_imrelay_replay",
          "$JS.API.STREAM.CREATE.KV_imrelay_replay",
          "$JS.API.DIRECT.GET.KV_imrelay_replay.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_replay",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_replay",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_replay.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_replay.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_replay.>",
          "$JS.API.STREAM.NAMES",
          "$JS.API.STREAM.INFO.OBJ_imrelay_media",
          "$JS.API.STREAM.MSG.GET.OBJ_imrelay_media",
          "$JS.API.DIRECT.GET.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.CREATE.OBJ_imrelay_media",
          "$JS.API.CONSUMER.CREATE.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.INFO.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.DELETE.OBJ_imrelay_media.>"
        ]
      },
      "subscribe": {
        "allow": [
          "_INBOX.>"
        ]
      }
    }
  },
  {
    "user": "imrelay-connector",
    "password": $IMRELAY_NATS_PASSWORD_CONNECTOR,
    "permissions": {
      "publish": {
        "allow": [
          "imrelay.in.>",
          "$JS.API.STREAM.INFO.IMRELAY_IN",
          "$JS.API.STREAM.CREATE.IMRELAY_IN",
          "$JS.API.STREAM.INFO.IMRELAY_OUT",
          "$JS.API.STREAM.CREATE.IMRELAY_OUT",
          "$JS.API.STREAM.INFO.IMRELAY_DLQ",
          "$JS.API.STREAM.CREATE.IMRELAY_DLQ",
          "$KV.imrelay_streams.>",
          "$JS.API.STREAM.INFO.KV_imrelay_streams",
          "$JS.API.STREAM.CREATE.KV_imrelay_streams",
          "$JS.API.DIRECT.GET.KV_imrelay_streams.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_streams",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_streams",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_streams.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_streams.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_streams.>",
          "$KV.imrelay_replay.>",
          "$JS.API.STREAM.INFO.KV_imrelay_replay",
          "$JS.API.STREAM.CREATE.KV_imrelay_replay",
          "$JS.API.DIRECT.GET.KV_imrelay_replay.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_replay",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_replay",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_replay.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_replay.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_replay.>",
          "$KV.imrelay_leases.>",
          "$JS.API.STREAM.INFO.KV_imrelay_leases",
          "$JS.API.STREAM.CREATE.KV_imrelay_leases",
          "$JS.API.DIRECT.GET.KV_imrelay_leases.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_leases",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_leases",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_leases.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_leases.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_leases.>"
        ]
      },
      "subscribe": {
        "allow": [
          "_INBOX.>",
          "imrelay.conn.>"
        ]
      },
      "allow_responses": true
    }
  },
  {
    "user": "imrelay-worker",
    "password": $IMRELAY_NATS_PASSWORD_WORKER,
    "permissions": {
      "publish": {
        "allow": [
          "imrelay.out.>",
          "imrelay.dlq.worker",
          "$JS.API.STREAM.INFO.IMRELAY_IN",
          "$JS.API.STREAM.CREATE.IMRELAY_IN",
          "$JS.API.STREAM.INFO.IMRELAY_OUT",
          "$JS.API.STREAM.CREATE.IMRELAY_OUT",
          "$JS.API.STREAM.INFO.IMRELAY_DLQ",
          "$JS.API.STREAM.CREATE.IMRELAY_DLQ",
          "$KV.imrelay_memory.>",
          "$JS.API.STREAM.INFO.KV_imrelay_memory",
          "$JS.API.STREAM.CREATE.KV_imrelay_memory",
          "$JS.API.DIRECT.GET.KV_imrelay_memory.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_memory",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_memory",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_memory.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_memory.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_memory.>",
          "$KV.imrelay_tokens.>",
          "$JS.API.STREAM.INFO.KV_imrelay_tokens",
          "$JS.API.STREAM.CREATE.KV_imrelay_tokens",
          "$JS.API.DIRECT.GET.KV_imrelay_tokens.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_tokens",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_tokens",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_tokens.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_tokens.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_tokens.>",
          "$KV.imrelay_deliveries.inbound.>",
          "$JS.API.STREAM.INFO.KV_imrelay_deliveries",
          "$JS.API.STREAM.CREATE.KV_imrelay_deliveries",
          "$JS.API.DIRECT.GET.KV_imrelay_deliveries.$KV.imrelay_deliveries.inbound.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_deliveries",
          "$JS.API.STREAM.NAMES",
          "$O.imrelay_media.>",
          "$JS.API.STREAM.INFO.OBJ_imrelay_media",
          "$JS.API.STREAM.CREATE.OBJ_imrelay_media",
          "$JS.API.STREAM.PURGE.OBJ_imrelay_media",
          "$JS.API.STREAM.MSG.GET.OBJ_imrelay_media",
          "$JS.API.DIRECT.GET.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.CREATE.OBJ_imrelay_media",
          "$JS.API.CONSUMER.CREATE.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.INFO.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.DELETE.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.INFO.IMRELAY_IN.llm-worker",
          "$JS.API.CONSUMER.CREATE.IMRELAY_IN.llm-worker",
          "$JS.API.CONSUMER.CREATE.IMRELAY_IN.llm-worker.>",
          "$JS.API.CONSUMER.DURABLE.CREATE.IMRELAY_IN.llm-worker",
          "$JS.API.CONSUMER.MSG.NEXT.IMRELAY_IN.llm-worker",
          "$JS.ACK.IMRELAY_IN.llm-worker.>"
        ]
      },
      "subscribe": {
        "allow": [
          "_INBOX.>"
        ]
      }
    }
  },
  {
    "user": "imrelay-sender",
    "password": $IMRELAY_NATS_PASSWORD_SENDER,
    "permissions": {
      "publish": {
        "allow": [
          "imrelay.dlq.sender",
          "imrelay.conn.>",
          "$JS.API.STREAM.INFO.IMRELAY_IN",
          "$JS.API.STREAM.CREATE.IMRELAY_IN",
          "$JS.API.STREAM.INFO.IMRELAY_OUT",
          "$JS.API.STREAM.CREATE.IMRELAY_OUT",
          "$JS.API.STREAM.INFO.IMRELAY_DLQ",
          "$JS.API.STREAM.CREATE.IMRELAY_DLQ",
          "$KV.imrelay_tokens.>",
          "$JS.API.STREAM.INFO.KV_imrelay_tokens",
          "$JS.API.STREAM.CREATE.KV_imrelay_tokens",
          "$JS.API.DIRECT.GET.KV_imrelay_tokens.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_tokens",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_tokens",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_tokens.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_tokens.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_tokens.>",
          "$KV.imrelay_deliveries.>",
          "$JS.API.STREAM.INFO.KV_imrelay_deliveries",
          "$JS.API.STREAM.CREATE.KV_imrelay_deliveries",
          "$JS.API.DIRECT.GET.KV_imrelay_deliveries.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_deliveries",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_deliveries",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_deliveries.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_deliveries.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_deliveries.>",
          "$KV.imrelay_ratelimits.>",
          "$JS.API.STREAM.INFO.KV_imrelay_ratelimits",
          "$JS.API.STREAM.CREATE.KV_imrelay_ratelimits",
          "$JS.API.DIRECT.GET.KV_imrelay_ratelimits.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_ratelimits",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_ratelimits",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_ratelimits.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_ratelimits.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_ratelimits.>",
          "$KV.imrelay_streams.>",
          "$JS.API.STREAM.INFO.KV_imrelay_streams",
          "$JS.API.STREAM.CREATE.KV_imrelay_streams",
          "$JS.API.DIRECT.GET.KV_imrelay_streams.>",
          "$JS.API.STREAM.MSG.GET.KV_imrelay_streams",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_streams",
          "$JS.API.CONSUMER.CREATE.KV_imrelay_streams.>",
          "$JS.API.CONSUMER.INFO.KV_imrelay_streams.>",
          "$JS.API.CONSUMER.DELETE.KV_imrelay_streams.>",
          "$JS.API.STREAM.NAMES",
          "$O.imrelay_media.>",
          "$JS.API.STREAM.INFO.OBJ_imrelay_media",
          "$JS.API.STREAM.CREATE.OBJ_imrelay_media",
          "$JS.API.STREAM.PURGE.OBJ_imrelay_media",
          "$JS.API.STREAM.MSG.GET.OBJ_imrelay_media",
          "$JS.API.DIRECT.GET.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.CREATE.OBJ_imrelay_media",
          "$JS.API.CONSUMER.CREATE.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.INFO.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.DELETE.OBJ_imrelay_media.>",
          "$JS.API.CONSUMER.INFO.IMRELAY_OUT.*",
          "$JS.API.CONSUMER.CREATE.IMRELAY_OUT.*",
          "$JS.API.CONSUMER.CREATE.IMRELAY_OUT.*.>",
          "$JS.API.CONSUMER.DURABLE.CREATE.IMRELAY_OUT.*",
          "$JS.API.CONSUMER.MSG.NEXT.IMRELAY_OUT.*",
          "$JS.ACK.IMRELAY_OUT.*.>"
        ]
      },
      "subscribe": {
        "allow": [
          "_INBOX.>"
        ]
      }
    }
  },
  {
    "user": "imrelay-cli",
    "password": $IMRELAY_NATS_PASSWORD_CLI,
    "permissions": {
      "publish": {
        "allow": [
          ">"
        ]
      },
      "subscribe": {
        "allow": [
          ">"
        ]
      }
    }
  }
]
}
{{- end }}
