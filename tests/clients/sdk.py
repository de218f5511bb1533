"""The `pusher` Python server SDK (pusher-http-python), driven by the Rust tests.

    python3 sdk.py '{"appId","key","secret","host","port","ops":[{"op":...},...]}'

runs each op in order and prints one JSON line per op: {"op", "result"} or
{"op", "error", "error_type"}. Ops: trigger {channels, event, data, socket_id?},
trigger_batch {batch}, channels_info {prefix_filter?, attributes?},
channel_info {channel, info?}, users_info {channel},
terminate_user_connections {userId}, authenticate {socketId, channel, custom_data?}.
"""
import json
import sys

import pusher

a = json.loads(sys.argv[1])
client = pusher.Pusher(app_id=str(a["appId"]), key=a["key"], secret=a["secret"],
                       host=a.get("host", "127.0.0.1"), port=a.get("port", 80), ssl=False, timeout=5)
for op in a["ops"]:
    name = op["op"]
    try:
        if name == "trigger":
            result = client.trigger(op["channels"], op["event"], op["data"], op.get("socket_id"))
        elif name == "trigger_batch":
            result = client.trigger_batch(op["batch"])
        elif name == "channels_info":
            result = client.channels_info(op.get("prefix_filter"), op.get("attributes", []))
        elif name == "channel_info":
            result = client.channel_info(op["channel"], op.get("info", []))
        elif name == "users_info":
            result = client.users_info(op["channel"])
        elif name == "terminate_user_connections":
            result = client.terminate_user_connections(op["userId"])
        elif name == "authenticate":
            result = client.authenticate(op["channel"], op["socketId"], op.get("custom_data"))
        else:
            raise ValueError("unknown op " + name)
        print(json.dumps({"op": name, "result": result}), flush=True)
    except Exception as e:  # the test reads the SDK's own error class
        print(json.dumps({"op": name, "error": str(e), "error_type": type(e).__name__}), flush=True)
