"""The seed Quick Start, sync then async. Run with: uv run python examples/quickstart.py"""

import asyncio

import runtimed

# Synchronous API
with runtimed.Session() as session:
    session.start_kernel()
    cell_id = session.create_cell("print('hello')")
    result = session.execute_cell(cell_id)
    print(result.stdout, end="")  # "hello\n"
    print(f"(env_source: {session.env_source})")


# Async API
async def main():
    async with runtimed.AsyncSession() as session:
        await session.start_kernel()
        cell_id = await session.create_cell("print('hello async')")
        result = await session.execute_cell(cell_id)
        print(result.stdout, end="")  # "hello async\n"


asyncio.run(main())
