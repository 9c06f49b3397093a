"""imapd's metric bookkeeping and its Prometheus text."""

from __future__ import annotations

from director.metrics import Sample
from imapd.metrics import ImapMetrics


def test_commands_logins_and_extra_samples_render() -> None:
    """Counters by protocol/command/status, login results, a cumulative latency histogram
    and caller-supplied gauges all appear in the exposition."""
    m = ImapMetrics()
    m.observe("imap", "UID FETCH", "OK", 0.003)
    m.observe("imap", "UID FETCH", "OK", 0.2)
    m.observe("pop3", "RETR", "-ERR", 0.001)
    m.login("imap", True)
    m.login("imap", False)
    text = m.render([Sample("imapd_open_connections", "gauge", "Open.", 3.0,
                            (("listener", "imap"),))]).decode()
    lines = text.splitlines()
    assert 'imapd_commands_total{protocol="imap",command="UID FETCH",status="OK"} 2' in lines
    assert 'imapd_commands_total{protocol="pop3",command="RETR",status="-ERR"} 1' in lines
    assert 'imapd_logins_total{protocol="imap",result="failed"} 1' in lines
    assert ('imapd_command_seconds_bucket{protocol="imap",command="UID FETCH",le="0.005"} 1'
            in lines)
    assert ('imapd_command_seconds_bucket{protocol="imap",command="UID FETCH",le="+Inf"} 2'
            in lines)
    assert 'imapd_command_seconds_count{protocol="imap",command="UID FETCH"} 2' in lines
    assert 'imapd_open_connections{listener="imap"} 3' in lines
    assert "# TYPE imapd_command_seconds histogram" in lines
