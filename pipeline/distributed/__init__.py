"""Ranks and how they talk: which launcher started the process and where ranks meet
(:mod:`.launch`), the process group, the rank's device and every collective our code issues
(:mod:`.comm`)."""
