"""IPython's input history: in memory by default (as nbclient has it), in its file on request."""

import sqlite3


def test_history_is_in_memory_unless_asked_for(runtimed_daemon_factory, tmp_path):
    for keep in (False, True):
        ipython_dir = tmp_path / f"ipython-{keep}"
        env = {"IPYTHONDIR": str(ipython_dir), "RUNTIMED_PYTHON_HISTORY": "1" if keep else "0"}
        daemon = runtimed_daemon_factory(pool_sizes={"uv": 1}, env=env)
        with daemon.session(f"history-{keep}") as session:
            session.start_kernel()
            session.run("marker = 'history-check'")
            hist = session.run("print(get_ipython().history_manager.hist_file)").stdout.strip()
            assert session.run("print(_i1)").stdout.strip() == "marker = 'history-check'", \
                "the session's own history works either way"
            session.shutdown_kernel()
        files = list(ipython_dir.glob("profile_default/history.sqlite"))
        if not keep:
            assert hist == ":memory:" and files == [], "no file written per execution"
        else:
            [db] = files
            assert hist == str(db)
            with sqlite3.connect(db) as conn:
                sources = [row[0] for row in conn.execute("SELECT source_raw FROM history")]
            assert "marker = 'history-check'" in sources
        daemon.stop()
