"""Each scheduler's docstring is torch's own, for the class of the same name, followed by
lrfused's note on what the class adds: ``help(lrfused.lr_scheduler.StepLR)`` reads as torch's
documentation does, with the device side explained after it."""

from __future__ import annotations

import inspect
import textwrap

from torch.optim import lr_scheduler as torch_schedulers


def torch_doc_and_note(cls: type) -> type:
    """Class decorator: ``cls.__doc__`` becomes torch's docstring, then ``cls``'s own as a note."""
    torch_class = getattr(torch_schedulers, cls.__name__)
    torch_doc = inspect.cleandoc(torch_class.__doc__ or "")
    note = inspect.cleandoc(cls.__doc__ or "")
    cls.__doc__ = f"{torch_doc}\n\nNote (lrfused):\n{textwrap.indent(note, '    ')}\n"
    return cls
