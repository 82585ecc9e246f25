"""
The tutorial's application: one file, grown step by step (docs/tutorial/).

Serve it from the directory that holds it::

    twistd -n phoenix --endpoint myapp:Endpoint
"""

from twisted.logger import Logger

from twisted_phoenix import Channel, Socket, error, ok
from twisted_phoenix import Endpoint as BaseEndpoint
from twisted_phoenix.token import sign, verify

log = Logger()


# -- Step 1: a socket and a channel -------------------------------------------


class PingChannel(Channel):
    def join(self, topic, payload):
        return ok()

    def handle_in(self, event, payload):
        if event == "ping":
            return ok({"ping": "pong"})
        # Anything else crashes the channel.
        return super().handle_in(event, payload)


# -- Step 2: replies and pushes -----------------------------------------------


class RoomChannel(Channel):
    # Shouts go through handle_out, once per member.
    intercept = ["shout"]

    def join(self, topic, payload):
        self.muted = set()
        self.send("after_join")  # push is not allowed inside join
        return ok({"name": self.assigns["name"]})

    def handle_in(self, event, payload):
        name = self.assigns["name"]
        match event, payload:
            case "shout", {"body": str(body)} if body.strip():
                self.broadcast("shout", {"from": name, "body": body})
                return ok()
            case "shout", _:
                return error({"reason": "empty shout"})
            case "typing", _:
                self.broadcast_from("typing", {"from": name})
                return None  # no reply
            case "mute", {"name": str(name)}:
                self.muted.add(name)
                return ok()
            case "ask", {"question": str(question)}:
                # A slow answer: reply later, handle other events meanwhile.
                self.send_after(1, ("answer", self.socket_ref(), question))
                return None
        return error({"reason": f"unknown event {event}"})

    def handle_info(self, message):
        match message:
            case "after_join":
                welcome = f"Welcome to {self.topic}, {self.assigns['name']}!"
                self.push("welcome", {"body": welcome})
            case ("answer", ref, question):
                self.reply(ref, ok({"question": question, "answer": 42}))

    def handle_out(self, event, payload):
        if payload.get("from") not in self.muted:
            self.push(event, payload)


class UserSocket(Socket):
    channels = {
        "ping": PingChannel,  # step 1
        "room:*": RoomChannel,  # step 2
    }

    def connect(self, params, connect_info):
        name = params.get("name")
        if not isinstance(name, str) or not name:
            name = "anonymous"
        self.assigns["name"] = name
        return True


# -- Step 3: authentication ---------------------------------------------------

SALT = "user socket"
MAX_AGE = 86400  # seconds: one day


def user_token(secret_key_base, user_id, clock=None):
    """A token for ``user_id``, for the page that opens the socket."""
    return sign(secret_key_base, SALT, user_id, max_age=MAX_AGE, clock=clock)


class UserChannel(Channel):
    def join(self, topic, payload):
        if topic != f"user:{self.assigns['user_id']}":
            return error({"reason": "unauthorized"})
        return ok()

    def handle_in(self, event, payload):
        if event == "sign_out":
            # Closes every connection of this user, on every node.
            self.endpoint.broadcast(self.socket.id(), "disconnect", {})
            return None
        return error({"reason": f"unknown event {event}"})


# -- Step 4: customize channel behavior ---------------------------------------


class RecurringChannel(Channel):
    period = 5  # seconds between fresh tokens

    def join(self, topic, payload):
        self.send_after(self.period, "send_token")
        return ok()

    def handle_info(self, message):
        if message == "send_token":
            self.send_after(self.period, "send_token")
            endpoint = self.endpoint
            user_id = self.assigns["user_id"]
            token = user_token(
                endpoint.secret_key_base, user_id, clock=endpoint.reactor
            )
            self.push("new_token", {"token": token})

    def terminate(self, reason):
        log.info(
            "RecurringChannel of user {user} ended: {reason!r}",
            user=self.assigns["user_id"], reason=reason,
        )


# -- Step 6: presence ---------------------------------------------------------


class TrackedRoomChannel(RoomChannel):
    """A room whose members are tracked with Presence, for signed-in users."""

    def handle_info(self, message):
        if message == "after_join":
            presence = self.endpoint.presence
            presence.track(self, self.assigns["user_id"], {
                "online_at": int(self.endpoint.reactor.seconds()),
                "node": self.endpoint.node_name,
            })
            self.push("presence_state", presence.list(self.topic))
        return super().handle_info(message)


# -- Step 3 (and 4, 6): the authenticated socket ------------------------------


class AuthSocket(Socket):
    channels = {
        "user:*": UserChannel,  # step 3
        "recurring": RecurringChannel,  # step 4
        "room:*": TrackedRoomChannel,  # step 6
    }

    def connect(self, params, connect_info):
        token = params.get("token")
        if not isinstance(token, str):
            return False  # HTTP 403
        endpoint = self.endpoint
        result = verify(
            endpoint.secret_key_base, SALT, token,
            max_age=MAX_AGE, clock=endpoint.reactor,
        )
        if not result:
            log.info("AuthSocket refused a token: {error}", error=result.error)
            return False  # HTTP 403
        self.assigns["user_id"] = result.data
        self.assigns["name"] = str(result.data)
        return True

    def id(self):
        return f"auth_socket:{self.assigns['user_id']}"


# -- The endpoint -------------------------------------------------------------


class Endpoint(BaseEndpoint):
    sockets = {
        "/socket": UserSocket,  # step 1
        "/auth_socket": AuthSocket,  # step 3
    }
