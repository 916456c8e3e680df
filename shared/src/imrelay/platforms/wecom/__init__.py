"""What WeCom's three bot kinds share (the self-built app, the group robot and the AI bot): the callback
crypto (WXBizMsgCrypt), the XML callbacks, the API's answers and error codes, and the simulator's
callbacks. Not a platform of its own: ``wecom_app``, ``wecom_group_robot`` and ``wecom_aibot`` are."""
