"""Hydra's hook for a library's config search path (discovered in the ``hydra_plugins`` namespace): puts the user's
config directories of reluvit ($RELUVIT_CONF_DIR) before its packaged ``conf``, so that a user's file hides the
packaged one of the same name. ``hydra.searchpath`` cannot: it appends after the primary config's directory."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ReluvitSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from reluvit.search import packaged
        from reluvit.search import search_path as reluvit_dirs

        main = [element.path for element in search_path.get_path() if element.provider == "main"]
        if main != [str(packaged("conf"))]:
            return  # another Hydra application
        for directory in reversed(reluvit_dirs("conf")[:-1]):
            search_path.prepend(provider="reluvit user configs", path=f"file://{directory}")
