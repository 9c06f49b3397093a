"""objmail objstore."""

from runtime import compiled as _compiled

# Before any submodule is imported: the hot-path modules among them may be served by their
# mypyc build, when one matches the sources (see runtime.compiled).
_compiled.install()
