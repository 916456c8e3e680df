"""WeCom's error codes: WXBizMsgCrypt's (callback crypto) and the API errcodes imrelay handles."""

from __future__ import annotations

from enum import IntEnum


class WeComCode(IntEnum):
    """WXBizMsgCrypt error codes (callback crypto) and the WeCom API errcodes the sender handles."""

    OK = 0
    VALIDATE_SIGNATURE = -40001
    PARSE_XML = -40002
    COMPUTE_SIGNATURE = -40003
    ILLEGAL_AES_KEY = -40004
    VALIDATE_RECEIVE_ID = -40005
    ENCRYPT_AES = -40006
    DECRYPT_AES = -40007
    ILLEGAL_BUFFER = -40008
    ENCODE_BASE64 = -40009
    DECODE_BASE64 = -40010
    GEN_RETURN = -40011
    # API errcodes
    SYSTEM_BUSY = -1
    INVALID_CREDENTIAL = 40001
    INVALID_ACCESS_TOKEN = 40014
    ACCESS_TOKEN_EXPIRED = 42001
    API_FREQ_OUT_OF_LIMIT = 45009
    IP_NOT_ALLOWED = 60020
    ALL_RECEIVERS_INVALID = 81013
    # media (``media/get``, ``media/upload``, ``webhook/upload_media``)
    INVALID_MEDIA_TYPE = 40004
    INVALID_FILE_TYPE = 40005
    INVALID_FILE_SIZE = 40006
    INVALID_MEDIA_ID = 40007
    INVALID_IMAGE_SIZE = 40009
    INVALID_VOICE_SIZE = 40010
    INVALID_VIDEO_SIZE = 40011
    EMPTY_MEDIA = 44001
    MEDIA_NEEDS_RANGE = 830002  # media/get of a file above 20 MB without a Range header
