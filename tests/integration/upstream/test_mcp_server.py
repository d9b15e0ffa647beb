"""``amfs-mcp-server`` from PyPI, unmodified, over stdio (the ``mcp`` client library)
against the sidecar: the memory tools Cursor and Claude Code call, given only
``AMFS_HTTP_URL``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.fixtures.sidecar import RunningSidecar

MCP_SERVER = str(Path(sys.executable).with_name("amfs-mcp-server"))
# Signals that make the server name itself after an IDE session instead of AMFS_AGENT_ID.
_IDE_VARIABLES = ("CURSOR_SESSION_ID", "VSCODE_PID", "CLAUDE_CODE_SESSION")


@asynccontextmanager
async def mcp_session(http_url: str, home: Path) -> AsyncIterator[ClientSession]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AMFS_") and k not in _IDE_VARIABLES}
    env.update(AMFS_HTTP_URL=http_url, AMFS_AGENT_ID="mcp-agent", AMFS_TOOLSET="all",
               HOME=str(home))
    params = StdioServerParameters(command=MCP_SERVER, env=env, cwd=str(home))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    result = await session.call_tool(tool, arguments)
    assert not getattr(result, "isError", False), result
    text = "".join(getattr(part, "text", "") for part in result.content)  # type: ignore[union-attr]
    return json.loads(text)


async def test_memory_tools_over_stdio(http_url: str, live_sidecar: RunningSidecar,
                                       tmp_path: Path) -> None:
    async with mcp_session(http_url, tmp_path) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert {"amfs_write", "amfs_read", "amfs_search", "amfs_commit_outcome",
                "amfs_stats", "amfs_history"} <= tools

        written = await call(session, "amfs_write", entity_path="checkout-service",
                             key="retry-pattern", value='{"max_retries": 3}')
        assert (written["entry"]["version"], written["entry"]["value"]) == (1, {"max_retries": 3})
        again = await call(session, "amfs_write", entity_path="checkout-service",
                           key="retry-pattern", value='{"max_retries": 5}', confidence=0.9)
        assert again["entry"]["version"] == 2
        await call(session, "amfs_write", entity_path="checkout-service", key="timeouts",
                   value="30 seconds for the payment API")

        read = await call(session, "amfs_read", entity_path="checkout-service",
                          key="retry-pattern")
        assert (read["version"], read["value"], read["provenance"]["agent_id"]) == (
            2, {"max_retries": 5}, "mcp-agent")
        missing = await call(session, "amfs_read", entity_path="checkout-service", key="nope")
        assert missing["status"] == "not_found"

        found = await call(session, "amfs_search", query="payment")
        assert found["count"] == 1
        assert [(e["entity_path"], e["key"]) for e in found["entries"]] == [
            ("checkout-service", "timeouts")]

        history = await call(session, "amfs_history", entity_path="checkout-service",
                             key="retry-pattern")
        assert history["version_count"] == 2
        assert [v["value"] for v in history["versions"]] == [{"max_retries": 3},
                                                            {"max_retries": 5}]

        # The session read retry-pattern: the outcome is evidence about it.
        outcome = await call(session, "amfs_commit_outcome", outcome_ref="deploy-7",
                             outcome_type="success")
        assert outcome["affected_entries"] == 1
        assert [(e["key"], e["version"]) for e in outcome["entries"]] == [("retry-pattern", 3)]

        stats = await call(session, "amfs_stats")
        assert (stats["total_entries"], stats["total_entities"], stats["total_agents"]) == (
            2, 1, 1)
        assert stats["agents"] == {"mcp-agent": 2}

    stored = live_sidecar.client().list_outcomes(outcome_ref="deploy-7")
    assert [(o.outcome_ref, o.agent_id) for o in stored] == [("deploy-7", "mcp-agent")]
