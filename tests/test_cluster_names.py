"""
Tests for :mod:`twisted_phoenix.cluster.names`: node names and addresses.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.cluster.names import NO_NODE, NodeName, is_local_host, parse_address, parse_node_name


class ParseNodeNameTests(SynchronousTestCase):
    """``name@host`` node names."""

    def test_name_and_host(self) -> None:
        """A name splits into its name and its host, and prints back the same."""
        parsed = parse_node_name("server@127.0.0.1")
        self.assertEqual(parsed, NodeName("server", "127.0.0.1"))
        self.assertEqual((parsed.name, parsed.host), ("server", "127.0.0.1"))
        self.assertEqual(str(parsed), "server@127.0.0.1")

    def test_hostnames_and_ipv6(self) -> None:
        """Host names, dotted names, dashes, underscores and IPv6 hosts are accepted."""
        self.assertEqual(parse_node_name("a-b_c.d@my-host.example.com"), NodeName("a-b_c.d", "my-host.example.com"))
        self.assertEqual(parse_node_name("n1@::1"), NodeName("n1", "::1"))

    def test_no_node(self) -> None:
        """The name of a node outside any cluster is Erlang's nonode@nohost, and parses."""
        self.assertEqual(NO_NODE, "nonode@nohost")
        self.assertEqual(parse_node_name(NO_NODE), NodeName("nonode", "nohost"))

    def test_rejected(self) -> None:
        """Anything but name@host is a ValueError that shows an example."""
        for text in ("server", "@127.0.0.1", "server@", "a@b@c", "sp ace@host", "name@ho st", "", "é@host",
                     "name@host/x"):
            with self.assertRaises(ValueError, msg=text) as caught:
                parse_node_name(text)
            self.assertIn("server@127.0.0.1", str(caught.exception))


class ParseAddressTests(SynchronousTestCase):
    """``host:port`` addresses."""

    def test_host_and_port(self) -> None:
        """host:port gives the host and the port as an int."""
        self.assertEqual(parse_address("127.0.0.1:9100"), ("127.0.0.1", 9100))
        self.assertEqual(parse_address("node.example.com:1"), ("node.example.com", 1))
        self.assertEqual(parse_address("h:65535"), ("h", 65535))

    def test_bracketed_ipv6(self) -> None:
        """An IPv6 host is written in brackets, which are removed."""
        self.assertEqual(parse_address("[::1]:9100"), ("::1", 9100))

    def test_rejected(self) -> None:
        """No port, a port out of range or not a number, or no host is a ValueError."""
        for text in ("127.0.0.1", "127.0.0.1:", ":9100", "h:0", "h:65536", "h:-1", "h:ab", "h:9100x", ""):
            self.assertRaises(ValueError, parse_address, text)


class IsLocalHostTests(SynchronousTestCase):
    """Which hosts are this machine (their nodes are found through the port mapper)."""

    def test_loopback(self) -> None:
        """localhost, ::1 and all of 127.0.0.0/8 are local."""
        for host in ("localhost", "::1", "127.0.0.1", "127.1.2.3"):
            self.assertTrue(is_local_host(host), host)

    def test_own_names(self) -> None:
        """This machine's host name and fully qualified name are local."""
        self.assertTrue(is_local_host(socket.gethostname()))
        self.assertTrue(is_local_host(socket.getfqdn()))

    def test_other_hosts(self) -> None:
        """Other addresses and names are not."""
        for host in ("10.0.0.1", "192.0.2.7", "example.com", "128.0.0.1", "nohost"):
            self.assertFalse(is_local_host(host), host)
