"""embedpipe: declarative embedding pipelines.

import embedpipe
pipe = embedpipe.load("pipelines/quickstart.yaml")
pipe.run()
pipe.search("how do I add a step?", k=5)
pipe.sql("select count(*) from quickstart")
"""

from embedpipe.api import Pipeline, load
from embedpipe.errors import EmbedpipeError, SpecError

__all__ = ["EmbedpipeError", "Pipeline", "SpecError", "load"]
__version__ = "0.1.0"
