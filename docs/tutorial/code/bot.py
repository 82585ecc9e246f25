"""
A bot for room:lobby, on the Python client (step 8): it welcomes whoever
comes online and answers "!who" with who is online.

    python bot.py TOKEN
"""

import sys

from twisted.internet import defer, task

from twisted_phoenix.client import Presence, Socket

URL = "ws://localhost:4000/auth_socket"


@defer.inlineCallbacks
def main(reactor, token):
    socket = Socket(URL, {"token": token}, reactor=reactor)
    room = socket.channel("room:lobby")
    presence = Presence(room)
    me = None

    def online():
        return ", ".join(sorted(presence.list(lambda key, _: key)))

    def shout(body):
        d = room.push("shout", {"body": body})
        d.addErrback(lambda failure: print("shout failed:", failure.value))

    def on_join(key, current, joined):
        if current is None and key != me:  # a new user, not another tab of one
            shout(f"Welcome, {key}!")

    def on_shout(message):
        if message["body"] == "!who" and message["from"] != me:
            shout(f"Online: {online()}")

    presence.on_join(on_join)
    presence.on_sync(lambda: print("online:", online()))
    room.on("shout", on_shout)

    yield socket.connect()
    reply = yield room.join()
    me = reply["name"]
    print("joined room:lobby as", me)
    yield defer.Deferred()  # run until Ctrl-C


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
