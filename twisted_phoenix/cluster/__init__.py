"""
The cluster layer: named nodes linked by Perspective Broker, a port mapper,
and the PubSub adapter that carries broadcasts between nodes.
"""

from .names import NO_NODE, parse_node_name
from .node import Node
from .tls import ClusterTLS

__all__ = ["NO_NODE", "ClusterTLS", "Node", "parse_node_name"]
