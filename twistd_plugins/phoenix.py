"""twistd plugin: ``twistd phoenix`` (see twisted_phoenix.tap)."""

from twisted.application.service import ServiceMaker

phoenix = ServiceMaker(
    "twisted_phoenix", "twisted_phoenix.tap", "Phoenix Channels server (twisted_phoenix).", "phoenix"
)
