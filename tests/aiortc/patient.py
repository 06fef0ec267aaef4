# aiortc (PyPI) as an independent consultation client: it joins a room through Sen's signaling
# (protocol v1) as the patient, waits to be admitted, offers its synthetic video and a data
# channel, answers the server's offers, takes the server's trickled candidates, and counts
# what comes back from the other participant: decoded video frames and data-channel replies.
# Prints one JSON line; exits non-zero if the frames or replies do not come.
#
#   python patient.py <ws URL> <room> <grant> <frames wanted>
import asyncio
import json
import sys

import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp

PINGS = 5


async def main(url, room, grant, wanted):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "join", "v": 1, "room": room, "grant": grant}))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "admitted" or message.get("state") == "admitted":
                break
            if message["type"] == "error":
                raise SystemExit(f"refused: {message}")

        # No STUN server: everything is inside this network namespace.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(VideoStreamTrack())
        channel = pc.createDataChannel("chat")
        frames = 0
        replies = []
        done = asyncio.Event()

        def check():
            if frames >= wanted and len(replies) >= PINGS:
                done.set()

        @pc.on("track")
        def on_track(track):
            async def read():
                nonlocal frames
                while True:
                    try:
                        await track.recv()
                    except Exception:
                        return
                    frames += 1
                    check()

            if track.kind == "video":
                asyncio.ensure_future(read())

        @channel.on("open")
        def on_open():
            # Until enough answers came: the first pings may arrive before the other side's
            # channel does.
            async def ping():
                n = 0
                while not done.is_set():
                    channel.send(f"ping {n}")
                    n += 1
                    await asyncio.sleep(0.2)

            asyncio.ensure_future(ping())

        @channel.on("message")
        def on_message(message):
            replies.append(message)
            check()

        await pc.setLocalDescription(await pc.createOffer())
        await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))

        async def signaling():
            async for raw in ws:
                message = json.loads(raw)
                kind = message["type"]
                if kind == "answer":
                    await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
                elif kind == "offer":
                    await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                    await pc.setLocalDescription(await pc.createAnswer())
                    await ws.send(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp}))
                elif kind == "ice" and message.get("candidate"):
                    c = message["candidate"]
                    candidate = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                    candidate.sdpMid = c.get("sdpMid")
                    candidate.sdpMLineIndex = c.get("sdpMLineIndex")
                    await pc.addIceCandidate(candidate)

        task = asyncio.ensure_future(signaling())
        try:
            await asyncio.wait_for(done.wait(), 60)
        except asyncio.TimeoutError:
            raise SystemExit(f"only {frames} frames and replies {replies}")
        finally:
            task.cancel()
            await pc.close()
        print(json.dumps({"frames": frames, "replies": replies}))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
