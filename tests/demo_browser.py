"""Headless Chromium driven by Selenium, for the tests that look at a page as a person would:
open a URL, choose a file, click, wait for text to appear, read it, save a screenshot.

  python tests/demo_browser.py http://127.0.0.1:8000/ image.png

prints the labels the server's demo page shows for the image, most probable first. It needs
Debian's `chromium` and `chromium-driver` (/usr/bin/chromedriver) and the `selenium` package
(the `test` extra); without one of them, MISSING says which to install.
"""
import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator

try:
  from selenium import webdriver
  from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.select import Select
  from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # Importable without it, so that the tests can say it is missing.
  webdriver = None

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')


def _missing() -> str | None:
  if CHROMIUM is None:
    return 'needs Debian chromium (apt-get install chromium chromium-driver)'
  if CHROMEDRIVER is None:
    return 'needs Debian chromium-driver (apt-get install chromium-driver)'
  if webdriver is None:
    return 'needs selenium (pip install "selenium>=4.20", in the test extra)'
  return None


MISSING = _missing()  # Why the browser tests are skipped here, or None.
# As root Chromium needs --no-sandbox; the machines have no network, and Chromium's background
# fetches (updates, sync) would only fail there, so they are off.
ARGUMENTS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--window-size=1280,1000',
             '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking',
             '--disable-component-update', '--disable-sync')


@contextlib.contextmanager
def chrome(*arguments: str) -> Iterator['webdriver.Chrome']:
  """A headless Chrome WebDriver on the system's chromium and chromedriver, quit on exit."""
  if MISSING:
    raise RuntimeError(MISSING)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ARGUMENTS + arguments:
    options.add_argument(argument)
  # Both paths given: Selenium Manager is never asked to download a browser or driver.
  driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  try:
    yield driver
  finally:
    driver.quit()


def open_page(driver, url: str, ready: str = 'body', timeout: float = 60) -> None:
  """Opens `url` and waits until an element matching the CSS selector `ready` exists."""
  driver.get(url)
  WebDriverWait(driver, timeout).until(
      lambda d: d.find_elements(By.CSS_SELECTOR, ready), f'{url}: no {ready!r} in the page')


def wait_text(driver, selector: str, until: Callable[[str], bool] = bool,
              timeout: float = 60) -> str:
  """The visible text of the first `selector` match once `until(text)` is true (non-empty)."""
  last = [None]

  def shown(d):
    elements = d.find_elements(By.CSS_SELECTOR, selector)
    last[0] = elements[0].text if elements else None
    return last[0] is not None and until(last[0])

  try:
    WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        shown)
  except TimeoutException:
    raise TimeoutError(f'{selector}: shows {last[0]!r} after {timeout} s') from None
  return last[0]


def texts(driver, selector: str) -> list[str]:
  """The visible text of every element matching the CSS selector, in page order."""
  return [element.text for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def attributes(driver, selector: str, name: str) -> list[str | None]:
  """Attribute `name` (e.g. 'data-label', 'href') of every element matching the CSS selector."""
  return [element.get_attribute(name)
          for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def upload(driver, selector: str, path: str | os.PathLike) -> None:
  """Chooses the file at `path` in the file input matching the CSS selector."""
  driver.find_element(By.CSS_SELECTOR, selector).send_keys(os.path.abspath(path))


def choose(driver, selector: str, value: str) -> None:
  """Selects the option with `value` in the <select> matching the CSS selector."""
  Select(driver.find_element(By.CSS_SELECTOR, selector)).select_by_value(value)


def click(driver, selector: str) -> None:
  """Clicks the element matching the CSS selector."""
  driver.find_element(By.CSS_SELECTOR, selector).click()


def screenshot(driver, path: str | os.PathLike) -> str:
  """Saves the window as a PNG at `path` and returns the path."""
  path = os.fspath(path)
  if not driver.save_screenshot(path):
    raise RuntimeError(f'could not save a screenshot to {path}')
  return path


def labels_shown(url: str, image: str | os.PathLike, timeout: float = 60) -> list[str]:
  """The labels the demo page at `url` lists after `image` is chosen in its file input."""
  with chrome() as driver:
    open_page(driver, url, '#file', timeout)
    upload(driver, '#file', image)  # Its change event sends the prediction.
    status = wait_text(driver, '#status', lambda text: text == 'done' or text.startswith('error'),
                       timeout)
    if status != 'done':
      raise RuntimeError(f'the page shows {status!r}')
    return attributes(driver, '#result li', 'data-label')


if __name__ == '__main__':
  print('\n'.join(labels_shown(sys.argv[1], sys.argv[2])))
