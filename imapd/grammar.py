"""The arguments of each IMAP command: one complete :class:`~imapd.lexer.Frame` in, one
:class:`~imapd.commands.Command` out (RFC 3501 section 9 and the extensions listed in
:mod:`imapd.commands`).

Framing (lines, literals, limits) is :mod:`imapd.parser`'s job; this module only reads a
frame that is already whole, so it is a plain recursive-descent reader with no state.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from imapd import commands as c
from imapd.errors import ImapdError
from imapd.fetchatts import parse_fetch_atts
from imapd.lexer import Frame, Lexer, ParseError
from imapd.notify import parse_notify
from imapd.searchkeys import SearchKey, UnknownCharset, parse_search_keys
from imapd.sequence import SequenceSet
from runtime import errors as kinds

__all__ = ["COMMAND_NAMES", "UID_COMMAND_NAMES", "CommandError", "parse_command"]

_ID_MAX_PAIRS = 30
_ID_MAX_FIELD = 30
_ID_MAX_VALUE = 1024
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_SPECIAL_USE = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important"}
)
_SPECIAL_USE_CASE = {name.upper(): name for name in _SPECIAL_USE}
#: SEARCH return options: ESEARCH and SEARCHRES (RFC 4731, 5182), CONTEXT=SEARCH (RFC 5267).
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE",
                            "PARTIAL"})
#: SORT return options: ESORT and CONTEXT=SORT (RFC 5267); SAVE is not offered with SORT.
_SORT_RETURN = _SEARCH_RETURN - {"SAVE"}
#: LIST-EXTENDED selection options whose criteria RECURSIVEMATCH can extend to children.
_LIST_SELECT_BASE = frozenset({"SUBSCRIBED", "SPECIAL-USE"})
_LIST_SELECT = _LIST_SELECT_BASE | {"REMOTE", "RECURSIVEMATCH"}
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


class CommandError(ImapdError, kinds.InvalidInput):
    """A command could not be parsed.

    :ivar tag: the command's tag, None if even that was unreadable.
    :ivar text: reason for the client.
    :ivar bad_charset: the SEARCH CHARSET was unknown (answered NO [BADCHARSET]).
    :ivar clears_saved: a ``SEARCH RETURN (SAVE)`` failed, which empties ``$`` (RFC 5182
        2.1) even though it never reached the session.
    """

    def __init__(self, tag: str | None, text: str, bad_charset: bool = False,
                 clears_saved: bool = False) -> None:
        super().__init__(text)
        self.tag = tag
        self.text = text
        self.bad_charset = bad_charset
        self.clears_saved = clears_saved


# -- shared pieces --------------------------------------------------------------------------


def _no_arguments(factory: Callable[[str], c.Command]) -> Callable[[Lexer, str, bool], c.Command]:
    def parse(lexer: Lexer, tag: str, uid: bool) -> c.Command:
        lexer.end()
        return factory(tag)

    return parse


def _paren_words(lexer: Lexer) -> tuple[str, ...]:
    """``( [atom *(SP atom)] )`` as upper-case words."""
    lexer.expect(b"(")
    words: list[str] = []
    if lexer.accept(b")"):
        return ()
    while True:
        words.append(lexer.word())
        if lexer.accept(b")"):
            return tuple(words)
        lexer.sp()


def _modseq_modifier(lexer: Lexer) -> int:
    lexer.sp()
    return lexer.number64()


# -- not authenticated ----------------------------------------------------------------------


def _authenticate(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    mechanism = lexer.word()
    initial: bytes | None = None
    if not lexer.at_end():
        lexer.sp()
        token = lexer.match(_BASE64)
        if token is None:
            raise ParseError("invalid SASL initial response")
        if token == b"=":
            initial = b""
        else:
            try:
                initial = base64.b64decode(token, validate=True)
            except binascii.Error:
                raise ParseError("invalid base64 in SASL initial response") from None
    lexer.end()
    return c.Authenticate(tag, mechanism, initial)


def _login(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    username = lexer.utf8(lexer.astring(), "user name")
    lexer.sp()
    password = lexer.utf8(lexer.astring(), "password")
    lexer.end()
    return c.Login(tag, username, password)


# -- any state ------------------------------------------------------------------------------


def _id(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    if lexer.peek_word() == "NIL":
        lexer.atom()
        lexer.end()
        return c.Id(tag, None)
    lexer.expect(b"(")
    pairs: list[tuple[str, str | None]] = []
    if not lexer.accept(b")"):
        while True:
            field = lexer.string()
            lexer.sp()
            value = lexer.nstring()
            if len(field) > _ID_MAX_FIELD or (value is not None and len(value) > _ID_MAX_VALUE):
                raise ParseError("ID field or value too long")
            pairs.append(
                (
                    field.decode("utf-8", "replace"),
                    None if value is None else value.decode("utf-8", "replace"),
                )
            )
            if len(pairs) > _ID_MAX_PAIRS:
                raise ParseError("too many ID fields")
            if lexer.accept(b")"):
                break
            lexer.sp()
    lexer.end()
    return c.Id(tag, tuple(pairs))


def _enable(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    capabilities: list[str] = []
    while not lexer.at_end():
        lexer.sp()
        capabilities.append(lexer.word())
    if not capabilities:
        raise ParseError("ENABLE needs at least one capability")
    return c.Enable(tag, tuple(capabilities))


# -- authenticated --------------------------------------------------------------------------


def _known_set(lexer: Lexer) -> SequenceSet:
    """A set of QRESYNC's SELECT parameter: ``$`` means nothing there, as SELECT empties
    the saved search result (RFC 5182 2.1)."""
    ids = lexer.sequence_set()
    if ids.saved:
        raise ParseError("'$' cannot be used in SELECT")
    return ids


def _qresync(lexer: Lexer) -> c.QResync:
    lexer.sp()
    lexer.expect(b"(")
    uidvalidity = lexer.nz_number()
    lexer.sp()
    modseq = lexer.number64()
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None
    if lexer.accept(b" "):
        if lexer.peek() != ord("("):
            known_uids = _known_set(lexer)
            if not lexer.accept(b" "):
                lexer.expect(b")")
                return c.QResync(uidvalidity, modseq, known_uids)
        lexer.expect(b"(")
        known_seqs = _known_set(lexer)
        lexer.sp()
        seq_match = (known_seqs, _known_set(lexer))
        lexer.expect(b")")
    lexer.expect(b")")
    return c.QResync(uidvalidity, modseq, known_uids, seq_match)


def _select(factory: type[c.SelectBase]) -> Callable[[Lexer, str, bool], c.Command]:
    def parse(lexer: Lexer, tag: str, uid: bool) -> c.Command:
        lexer.sp()
        mailbox = lexer.mailbox()
        condstore = False
        qresync: c.QResync | None = None
        if not lexer.at_end():
            lexer.sp()
            lexer.expect(b"(")
            while True:
                word = lexer.word()
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC" and qresync is None:
                    qresync = _qresync(lexer)
                else:
                    raise ParseError(f"unknown select parameter {word[:30]}")
                if lexer.accept(b")"):
                    break
                lexer.sp()
        lexer.end()
        return factory(tag, mailbox, condstore, qresync)

    return parse


def _create(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    mailbox = lexer.mailbox()
    uses: list[str] = []
    if not lexer.at_end():
        lexer.sp()
        lexer.expect(b"(")
        while True:
            if lexer.word() != "USE":
                raise ParseError("the only CREATE parameter is USE")
            lexer.sp()
            lexer.expect(b"(")
            if not lexer.accept(b")"):
                while True:
                    lexer.expect(b"\\")
                    name = "\\" + lexer.atom().decode("ascii")
                    if name.upper() not in _SPECIAL_USE_CASE:
                        raise ParseError(f"unknown special-use attribute {name[:30]}")
                    uses.append(_SPECIAL_USE_CASE[name.upper()])
                    if lexer.accept(b")"):
                        break
                    lexer.sp()
            if lexer.accept(b")"):
                break
            lexer.sp()
    lexer.end()
    return c.Create(tag, mailbox, tuple(dict.fromkeys(uses)))


def _one_mailbox(
    factory: Callable[[str, str], c.Command],
) -> Callable[[Lexer, str, bool], c.Command]:
    def parse(lexer: Lexer, tag: str, uid: bool) -> c.Command:
        lexer.sp()
        mailbox = lexer.mailbox()
        lexer.end()
        return factory(tag, mailbox)

    return parse


def _rename(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    old = lexer.mailbox()
    lexer.sp()
    new = lexer.mailbox()
    lexer.end()
    return c.Rename(tag, old, new)


def _list(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    extended = False
    select_options: tuple[str, ...] = ()
    if lexer.peek() == ord("("):
        select_options = _list_select_options(lexer)
        extended = True
        lexer.sp()
    reference = lexer.mailbox()
    # "mailbox" above turns a reference of "inbox" into "INBOX"; harmless for a prefix.
    lexer.sp()
    patterns: list[str] = []
    if lexer.accept(b"("):
        extended = True
        while True:
            patterns.append(lexer.list_mailbox())
            if lexer.accept(b")"):
                break
            lexer.sp()
    else:
        patterns.append(lexer.list_mailbox())
    return_options: list[str] = []
    return_status: tuple[str, ...] = ()
    if not lexer.at_end():
        lexer.sp()
        if lexer.word() != "RETURN":
            raise ParseError("expected RETURN")
        extended = True
        lexer.sp()
        lexer.expect(b"(")
        if not lexer.accept(b")"):
            while True:
                option = lexer.word()
                if option not in _LIST_RETURN:
                    raise ParseError(f"unknown LIST return option {option[:30]}")
                return_options.append(option)
                if option == "STATUS":
                    lexer.sp()
                    return_status = _status_items(lexer)
                if lexer.accept(b")"):
                    break
                lexer.sp()
    lexer.end()
    return c.List(
        tag,
        reference,
        tuple(patterns),
        select_options,
        tuple(return_options),
        return_status,
        extended,
    )


def _list_select_options(lexer: Lexer) -> tuple[str, ...]:
    """LIST-EXTENDED selection options (RFC 5258 3.1, RFC 6154 SPECIAL-USE): an unknown
    one is BAD, and so is RECURSIVEMATCH without a base option for it to modify."""
    options = _paren_words(lexer)
    for option in options:
        if option not in _LIST_SELECT:
            raise ParseError(f"unknown LIST selection option {option[:30]}")
    if "RECURSIVEMATCH" in options and not _LIST_SELECT_BASE.intersection(options):
        raise ParseError("RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE")
    return tuple(dict.fromkeys(options))


def _getquota(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    root = lexer.utf8(lexer.astring(), "quota root")
    lexer.end()
    return c.GetQuota(tag, root)


def _setquota(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    """``SETQUOTA root (resource limit ...)`` (RFC 9208 4.1.3)."""
    lexer.sp()
    root = lexer.utf8(lexer.astring(), "quota root")
    lexer.sp()
    lexer.expect(b"(")
    limits: list[tuple[str, int]] = []
    if not lexer.accept(b")"):
        while True:
            resource = lexer.word()
            lexer.sp()
            limits.append((resource, lexer.number64()))
            if lexer.accept(b")"):
                break
            lexer.sp()
    lexer.end()
    return c.SetQuota(tag, root, tuple(limits))


def _lsub(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    reference = lexer.mailbox()
    lexer.sp()
    pattern = lexer.list_mailbox()
    lexer.end()
    return c.Lsub(tag, reference, pattern)


def _status_items(lexer: Lexer) -> tuple[str, ...]:
    items = _paren_words(lexer)
    if not items:
        raise ParseError("STATUS needs at least one data item")
    for item in items:
        if item not in c.STATUS_ITEMS:
            raise ParseError(f"unknown STATUS item {item[:30]}")
    return tuple(dict.fromkeys(items))


def _status(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    mailbox = lexer.mailbox()
    lexer.sp()
    items = _status_items(lexer)
    lexer.end()
    return c.Status(tag, mailbox, items)


def _append(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    mailbox = lexer.mailbox()
    messages: list[c.AppendMessage] = []
    while not lexer.at_end() or not messages:
        lexer.sp()
        flags: tuple[str, ...] = ()
        if lexer.peek() == ord("("):
            flags = lexer.flag_list()
            lexer.sp()
        internaldate = None
        if lexer.peek() == ord('"'):
            internaldate = lexer.date_time()
            lexer.sp()
        if lexer.peek_word() == "CATENATE":
            lexer.atom()
            lexer.sp()
            messages.append(c.AppendMessage(b"", flags, internaldate,
                                            catenate=_cat_parts(lexer)))
            continue
        if not lexer.at_literal():
            raise ParseError("APPEND data must be a literal")
        data, binary = lexer.literal(binary_ok=True)
        messages.append(c.AppendMessage(data, flags, internaldate, binary))
    return c.Append(tag, mailbox, tuple(messages))


def _cat_parts(lexer: Lexer) -> tuple[c.CatText | c.CatUrl, ...]:
    """CATENATE's ``"(" cat-part *(SP cat-part) ")"`` (RFC 4469 5)."""
    lexer.expect(b"(")
    parts: list[c.CatText | c.CatUrl] = []
    while True:
        word = lexer.word()
        lexer.sp()
        if word == "TEXT":
            if not lexer.at_literal():
                raise ParseError("CATENATE TEXT must be a literal")
            parts.append(c.CatText(lexer.literal(binary_ok=True)[0]))
        elif word == "URL":
            parts.append(c.CatUrl(lexer.utf8(lexer.astring(), "URL")))
        else:
            raise ParseError(f"unknown CATENATE part {word[:30]}")
        if lexer.accept(b")"):
            return tuple(parts)
        lexer.sp()


# -- selected -------------------------------------------------------------------------------


def _search(lexer: Lexer, tag: str, uid: bool, max_depth: int = 64) -> c.Command:
    lexer.sp()
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if lexer.peek_word() == "RETURN":
        return_options, partial = _return_options(lexer, _SEARCH_RETURN, "SEARCH")
    if return_options is None or "SAVE" not in return_options:
        return _search_criteria(lexer, tag, uid, max_depth, return_options, partial)
    try:
        return _search_criteria(lexer, tag, uid, max_depth, return_options, partial)
    except UnknownCharset as unknown:
        raise CommandError(tag, unknown.text, bad_charset=True, clears_saved=True) from None
    except ParseError as exc:  # a name of its own per type: compiled, a name has one type
        raise CommandError(tag, f"Error in IMAP command {'UID ' if uid else ''}SEARCH: "
                           f"{exc.text}", clears_saved=True) from None


def _return_options(lexer: Lexer, allowed: frozenset[str], command: str,
                    ) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """``RETURN (...) SP``: the upper-cased options and PARTIAL's range (RFC 4466
    ``search-return-opts``; RFC 5267 ``partial-range = nz-number ":" nz-number``, where
    ``500:400`` means ``400:500``).  One PARTIAL or one ALL at most (RFC 5267 4.4)."""
    lexer.atom()
    lexer.sp()
    lexer.expect(b"(")
    options: list[str] = []
    partial: tuple[int, int] | None = None
    if not lexer.accept(b")"):
        while True:
            option = lexer.word()
            if option not in allowed:
                raise ParseError(f"unknown {command} return option {option[:30]}")
            if option == "PARTIAL":
                if partial is not None:
                    raise ParseError("only one PARTIAL return option is allowed")
                lexer.sp()
                low = lexer.nz_number()
                lexer.expect(b":")
                partial = (low, lexer.nz_number())
            options.append(option)
            if lexer.accept(b")"):
                break
            lexer.sp()
    if partial is not None and "ALL" in options:
        raise ParseError("PARTIAL and ALL cannot be combined")
    lexer.sp()
    return tuple(options), partial


def _search_criteria(lexer: Lexer, tag: str, uid: bool, max_depth: int,
                     return_options: tuple[str, ...] | None,
                     partial: tuple[int, int] | None) -> c.Search:
    charset: str | None = None
    if lexer.peek_word() == "CHARSET":
        lexer.atom()
        lexer.sp()
        charset = lexer.astring().decode("ascii", "replace").upper()
        lexer.sp()
    criteria = parse_search_keys(lexer, charset, max_depth)
    return c.Search(tag, criteria, charset, uid, return_options, partial)


def _charset_and_criteria(lexer: Lexer, max_depth: int) -> tuple[str, SearchKey]:
    """SORT's and THREAD's ``SP charset 1*(SP search-key)`` (the charset is required)."""
    lexer.sp()
    charset = lexer.astring().decode("ascii", "replace").upper()
    lexer.sp()
    return charset, parse_search_keys(lexer, charset, max_depth)


def _sort(lexer: Lexer, tag: str, uid: bool, max_depth: int = 64) -> c.Command:
    lexer.sp()
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if lexer.peek_word() == "RETURN":
        return_options, partial = _return_options(lexer, _SORT_RETURN, "SORT")
    words = _paren_words(lexer)
    keys: list[tuple[c.SortKey, bool]] = []
    reverse = False
    for word in words:
        if word == "REVERSE" and not reverse:
            reverse = True
            continue
        try:
            keys.append((c.SortKey(word), reverse))
        except ValueError:
            raise ParseError(f"unknown SORT key {word[:30]}") from None
        reverse = False
    if not keys or reverse:
        raise ParseError("SORT needs sort keys")
    charset, criteria = _charset_and_criteria(lexer, max_depth)
    return c.Sort(tag, tuple(keys), charset, criteria, uid, return_options, partial)


def _cancelupdate(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    """``CANCELUPDATE 1*(SP quoted)`` (RFC 5267 4.3.5): the tags of updating searches."""
    tags: list[str] = []
    while not lexer.at_end() or not tags:
        lexer.sp()
        tags.append(lexer.string().decode("ascii", "replace"))
    return c.CancelUpdate(tag, tuple(tags))


def _thread(lexer: Lexer, tag: str, uid: bool, max_depth: int = 64) -> c.Command:
    lexer.sp()
    word = lexer.word()
    try:
        algorithm = c.ThreadAlgorithm(word)
    except ValueError:
        raise ParseError(f"unknown THREAD algorithm {word[:30]}") from None
    charset, criteria = _charset_and_criteria(lexer, max_depth)
    return c.Thread(tag, algorithm, charset, criteria, uid)


def _fetch(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    sequence = lexer.sequence_set()
    lexer.sp()
    attributes = parse_fetch_atts(lexer)
    changedsince: int | None = None
    vanished = False
    if not lexer.at_end():
        lexer.sp()
        lexer.expect(b"(")
        while True:
            word = lexer.word()
            if word == "CHANGEDSINCE" and changedsince is None:
                changedsince = _modseq_modifier(lexer)
            elif word == "VANISHED" and uid:
                vanished = True
            else:
                raise ParseError(f"unknown FETCH modifier {word[:30]}")
            if lexer.accept(b")"):
                break
            lexer.sp()
        if vanished and changedsince is None:
            raise ParseError("VANISHED needs CHANGEDSINCE")
    lexer.end()
    return c.Fetch(tag, sequence, attributes, uid, changedsince, vanished)


_STORE_MODES = {
    "FLAGS": (c.StoreMode.REPLACE, False),
    "FLAGS.SILENT": (c.StoreMode.REPLACE, True),
    "+FLAGS": (c.StoreMode.ADD, False),
    "+FLAGS.SILENT": (c.StoreMode.ADD, True),
    "-FLAGS": (c.StoreMode.REMOVE, False),
    "-FLAGS.SILENT": (c.StoreMode.REMOVE, True),
}
_STORE_ITEM = re.compile(rb"[+-]?[A-Za-z.]+")


def _store(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    sequence = lexer.sequence_set()
    lexer.sp()
    unchangedsince: int | None = None
    if lexer.accept(b"("):
        if lexer.word() != "UNCHANGEDSINCE":
            raise ParseError("the only STORE modifier is UNCHANGEDSINCE")
        unchangedsince = _modseq_modifier(lexer)
        lexer.expect(b")")
        lexer.sp()
    item = lexer.match(_STORE_ITEM)
    if item is None or item.decode("ascii").upper() not in _STORE_MODES:
        raise ParseError("expected FLAGS, +FLAGS or -FLAGS")
    mode, silent = _STORE_MODES[item.decode("ascii").upper()]
    lexer.sp()
    if lexer.peek() == ord("("):
        flags = lexer.flag_list()
    else:
        # RFC 3501 also allows the flags without parentheses: "STORE 12 +FLAGS \Deleted".
        found = [lexer.flag()]
        while not lexer.at_end():
            lexer.sp()
            found.append(lexer.flag())
        flags = tuple(dict.fromkeys(found))
    lexer.end()
    return c.Store(tag, sequence, mode, flags, silent, uid, unchangedsince)


def _copy_like(factory: type[c.Copy] | type[c.Move]) -> Callable[[Lexer, str, bool], c.Command]:
    def parse(lexer: Lexer, tag: str, uid: bool) -> c.Command:
        lexer.sp()
        sequence = lexer.sequence_set()
        lexer.sp()
        mailbox = lexer.mailbox()
        lexer.end()
        return factory(tag, sequence, mailbox, uid)

    return parse


def _compress(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    lexer.sp()
    mechanism = lexer.word()
    if mechanism != "DEFLATE":  # RFC 4978 3: an unknown argument is BAD
        raise ParseError(f"unknown compression mechanism {mechanism[:30]}")
    lexer.end()
    return c.Compress(tag, mechanism)


def _expunge(lexer: Lexer, tag: str, uid: bool) -> c.Command:
    if not uid:
        lexer.end()
        return c.Expunge(tag)
    lexer.sp()
    uids = lexer.sequence_set()
    lexer.end()
    return c.UidExpunge(tag, uids)


_Parse = Callable[[Lexer, str, bool], c.Command]

_COMMANDS: dict[str, _Parse] = {
    "CAPABILITY": _no_arguments(c.Capability),
    "NOOP": _no_arguments(c.Noop),
    "LOGOUT": _no_arguments(c.Logout),
    "STARTTLS": _no_arguments(c.StartTLS),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ID": _id,
    "ENABLE": _enable,
    "SELECT": _select(c.Select),
    "EXAMINE": _select(c.Examine),
    "CREATE": _create,
    "DELETE": _one_mailbox(c.Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(c.Subscribe),
    "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "NAMESPACE": _no_arguments(c.Namespace),
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _one_mailbox(c.GetQuotaRoot),
    "SETQUOTA": _setquota,
    "IDLE": _no_arguments(c.Idle),
    "COMPRESS": _compress,
    "CHECK": _no_arguments(c.Check),
    "CLOSE": _no_arguments(c.Close),
    "UNSELECT": _no_arguments(c.Unselect),
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "SORT": _sort,
    "THREAD": _thread,
    "CANCELUPDATE": _cancelupdate,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy_like(c.Copy),
    "MOVE": _copy_like(c.Move),
    "NOTIFY": parse_notify,
}
UID_COMMAND_NAMES = frozenset({"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE", "SORT",
                               "THREAD"})
"""The commands that have a UID form."""

COMMAND_NAMES = frozenset(_COMMANDS)
"""Every command word the grammar knows."""


def parse_command(frame: Frame, max_search_depth: int = 64, *,
                  utf8_names: bool = False) -> c.Command:
    """Parse one complete command.

    :param max_search_depth: deepest nesting accepted in SEARCH criteria.
    :param utf8_names: mailbox names are UTF-8, not modified UTF-7 (IMAP4rev2).
    :raises CommandError: with the tag (when readable) and a reason for the client.
    """
    lexer = Lexer(frame, utf8_names=utf8_names)
    try:
        tag = lexer.tag()
    except ParseError:
        raise CommandError(None, "Invalid or missing tag") from None
    if tag == "*":
        raise CommandError(None, "Invalid tag '*'")
    name = ""
    uid = False
    try:
        lexer.sp()
        name = lexer.word()
        if name == "UID":
            lexer.sp()
            name = lexer.word()
            uid = True
            if name not in UID_COMMAND_NAMES:
                raise CommandError(tag, f"Unknown UID command {name[:30]}")
        handler = _COMMANDS.get(name)
        if handler is None:
            raise CommandError(tag, f"Unknown command {name[:30]}")
        if name == "SEARCH":
            return _search(lexer, tag, uid, max_search_depth)
        if name == "SORT":
            return _sort(lexer, tag, uid, max_search_depth)
        if name == "THREAD":
            return _thread(lexer, tag, uid, max_search_depth)
        return handler(lexer, tag, uid)
    except UnknownCharset as unknown:
        raise CommandError(tag, unknown.text, bad_charset=True) from None
    except ParseError as exc:  # a name of its own per type: compiled, a name has one type
        where = f" {'UID ' if uid else ''}{name}" if name else ""
        raise CommandError(tag, f"Error in IMAP command{where}: {exc.text}") from None
