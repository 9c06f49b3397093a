"""What every objmail daemon shares: config loading, the event loop, the daemon runner
(:mod:`runtime.daemon`: arguments, exit statuses, start and orderly stop), logging
(:mod:`runtime.logs`), Prometheus metrics (:mod:`runtime.metrics`), the direct socket
write, and the key names object servers and directors agree on.

This is the bottom layer: it imports none of objstore, director, metadata, imapd or ops
(enforced by import-linter, see setup.cfg).
"""

from runtime import compiled as _compiled

# Before any submodule is imported: the receive buffer may be served by its mypyc build,
# when one matches the sources (see runtime.compiled).
_compiled.install()
