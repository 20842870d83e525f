"""The runtimed client: async core (:mod:`.async_session`) and sync facade (:mod:`.sync`)."""
