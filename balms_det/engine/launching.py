"""The command line of balms-det's tools: Detectron2's ``default_argument_parser`` with a free
local port as the default ``--dist-url`` of a single-machine run.

Detectron2's default ``--dist-url`` is one fixed port per user, so a second multi-process run
on the same machine dies with ``Address already in use``. Here a single-machine run that names
no ``--dist-url`` gets ``auto`` (Detectron2's ``launch`` picks a free port on 127.0.0.1); an
explicit ``--dist-url`` and multi-machine runs are passed on as they are (a multi-machine run
that names none keeps Detectron2's default).
"""

from detectron2.engine import default_argument_parser

__all__ = ["argument_parser", "dist_url"]

_HELP = (
    "initialization URL of torch.distributed; default: a free port on this machine for a "
    "single-machine run ('auto'), Detectron2's fixed port on 127.0.0.1 for several machines "
    "(pass tcp://HOST:PORT of machine 0 there)"
)


def argument_parser(epilog=None):
    """Detectron2's ``default_argument_parser(epilog)`` whose ``--dist-url`` defaults to
    None; resolve it with :func:`dist_url`."""
    parser = default_argument_parser(epilog=epilog)
    parser.set_defaults(dist_url=None)
    parser._option_string_actions["--dist-url"].help = _HELP
    return parser


def dist_url(args):
    """The URL for Detectron2's ``launch``: ``args.dist_url`` when given, else ``"auto"`` on
    one machine and Detectron2's default on several."""
    if args.dist_url:
        return args.dist_url
    if args.num_machines == 1:
        return "auto"
    return default_argument_parser().get_default("dist_url")
