"""How the server answers errors: every one is `{"error": "one line"}`, bad input 4xx, a failure
500, whether it comes from the request handling, FastAPI's validation or Starlette's routing."""

import fastapi
from fastapi import responses
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lgnet_jax import errors

# The longest error message answered, so that a value the client sent is never echoed whole
# (the messages cut the values they quote to about 60 characters; this bounds the rest).
MAX_MESSAGE_CHARS = 300


def short(text: str) -> str:
  """`text` as one line of at most MAX_MESSAGE_CHARS (cut with '...')."""
  return errors.clip(errors.one_line(text), MAX_MESSAGE_CHARS)


class ApiError(Exception):
  """A request answered with `status` and `{"error": message}`."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status = status
    self.message = short(message)
    self.headers = headers


def error_json(
    status: int, message: str, headers: dict[str, str] | None = None
) -> responses.JSONResponse:
  return responses.JSONResponse({'error': short(message)}, status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
  """FastAPI's list of validation errors as one line naming the fields."""
  missing = [str(e['loc'][-1]) for e in exc.errors() if e.get('type') == 'missing']
  parts = [f'missing form field{"s" * (len(missing) > 1)} {", ".join(missing)}'] if missing else []
  for e in exc.errors():
    if e.get('type') != 'missing':
      given = e.get('input')
      value = f' (got {given!r:.60})' if isinstance(given, (str, int)) else ''
      parts.append(f'form field {e["loc"][-1]}: {errors.one_line(e["msg"])}{value}')
  return '; '.join(parts) or 'invalid request'


def add_error_handlers(app: fastapi.FastAPI) -> None:
  """Every error is `{"error": "one line"}`: bad input 4xx, a failure 500."""

  @app.exception_handler(ApiError)
  async def api_error(_, exc: ApiError):
    return error_json(exc.status, exc.message, exc.headers)

  @app.exception_handler(RequestValidationError)
  async def invalid(_, exc: RequestValidationError):
    return error_json(422, validation_message(exc))

  @app.exception_handler(StarletteHTTPException)
  async def http_error(_, exc: StarletteHTTPException):
    return error_json(exc.status_code, str(exc.detail), exc.headers)

  @app.exception_handler(Exception)
  async def failure(_, exc: Exception):
    return error_json(500, f'internal error: {type(exc).__name__}: {exc}')
