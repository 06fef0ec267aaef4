// The consultation page in a real browser: headless Chromium (Debian `chromium`, driven by
// npm `playwright-core`) opens /consult/{room} as the doctor and as the patient with fake
// camera and microphone; the patient waits, the doctor admits it, each page decodes more
// than 100 frames of the other's video through the server's forwarding unit, a chat message
// crosses, the page switches language, the doctor ends the consultation. Screenshots of both
// pages go to the output directory. Exits non-zero with the reason on the first failed
// expectation. Run inside a private network namespace (Chromium ignores loopback candidates).
//
//   node consult.cjs <base URL> <room> <doctor grant> <patient grant> <output dir>
//
// With EXPECT_MOVED=1 the room is held by a node that died: both pages must have opened their
// media connection again (told `media` `moved` by the node that took the room).
"use strict";

const path = require("path");
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const [base, room, doctorGrant, patientGrant, out] = process.argv.slice(2);
const WAIT = 15000;
const MEDIA_WAIT = 45000;

// Waits until this page has decoded more than 100 video frames of the others and returns
// how many. getStats has no event: the page polls it, within MEDIA_WAIT.
async function decodes(page, who) {
  const frames = await page.evaluate(async (wait) => {
    const deadline = Date.now() + wait;
    let frames = await window.senFramesDecoded();
    while (frames <= 100 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      frames = await window.senFramesDecoded();
    }
    return frames;
  }, MEDIA_WAIT);
  expect(frames > 100, `${who} to decode more than 100 frames of the other's video, got ${frames}`);
  return frames;
}

function expect(condition, what) {
  if (!condition) throw new Error(`expected ${what}`);
}

async function open(browser, grant) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("dialog", (dialog) => dialog.accept());
  await page.goto(`${base}/consult/${room}#grant=${grant}`);
  // The fragment is read and dropped from the address bar.
  expect(!page.url().includes("#grant="), "the grant to leave the address bar");
  await page.click("#check-devices");
  await page.waitForFunction(
    () => {
      const stream = document.getElementById("preview").srcObject;
      return stream && stream.getVideoTracks().length === 1 && stream.getAudioTracks().length === 1;
    },
    null,
    { timeout: WAIT },
  );
  await page.waitForFunction(() => !document.getElementById("join").disabled, null, { timeout: WAIT });
  return { page, errors };
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--no-sandbox"],
  });
  try {
    const doctor = await open(browser, doctorGrant);
    const patient = await open(browser, patientGrant);
    expect((await doctor.page.textContent("h1")) === "Khám bệnh từ xa", "the Vietnamese title by default");

    await doctor.page.click("#join");
    await doctor.page.waitForSelector("#call:not([hidden])", { timeout: WAIT });
    await patient.page.click("#join");
    await patient.page.waitForSelector("#waiting:not([hidden])", { timeout: WAIT });
    const waitingText = await patient.page.textContent("#waiting-detail");
    expect(waitingText.includes("Bạn là người tiếp theo"), `the patient's place, got "${waitingText}"`);

    // The doctor sees the patient waiting and admits it.
    await doctor.page.click("#waiting-list li button", { timeout: WAIT });
    await patient.page.waitForSelector("#call:not([hidden])", { timeout: WAIT });
    const local = await patient.page.evaluate(() => document.getElementById("local").srcObject.getTracks().length);
    expect(local === 2, "the patient's own camera and microphone in the consultation");

    // Media crosses the server both ways, and shows in the remote video element.
    const [doctorFrames, patientFrames] = await Promise.all([
      decodes(doctor.page, "the doctor"),
      decodes(patient.page, "the patient"),
    ]);
    const [doctorOpened, patientOpened] = await Promise.all(
      [doctor.page, patient.page].map((page) => page.evaluate(() => window.senMediaOpened())),
    );
    if (process.env.EXPECT_MOVED) {
      expect(doctorOpened >= 2 && patientOpened >= 2, `media opened again after the move, got ${doctorOpened} and ${patientOpened}`);
    }
    await patient.page
      .waitForFunction(() => document.getElementById("remote").videoWidth > 0, null, { timeout: WAIT })
      .catch(() => {});
    const shown = await patient.page.evaluate(() => {
      const video = document.getElementById("remote");
      return {
        stream: video.srcObject !== null,
        tracks: video.srcObject ? video.srcObject.getTracks().length : 0,
        width: video.videoWidth,
        paused: video.paused,
      };
    });
    expect(shown.stream && shown.width > 0, `the doctor's video in the patient's remote video element, got ${JSON.stringify(shown)}`);

    // Quality from RTCP (every 5 s): the round trip is measured, not unknown ("?").
    const measured = (page) =>
      page
        .waitForFunction(() => /\d ms$/.test(document.getElementById("quality").textContent), null, { timeout: WAIT })
        .then(() => page.textContent("#quality"));
    const [doctorQuality, patientQuality] = await Promise.all([measured(doctor.page), measured(patient.page)]);

    const message = "Chào bác sĩ, tôi bị sốt từ hôm qua.";
    await patient.page.fill("#chat-input", message);
    await patient.page.click("#chat-form button[type=submit]");
    await doctor.page.waitForFunction(
      (text) => document.getElementById("chat-log").textContent.includes(text),
      message,
      { timeout: WAIT },
    );

    await patient.page.click("#mute-audio");
    const muted = await patient.page.evaluate(() =>
      document.getElementById("local").srcObject.getAudioTracks().every((t) => !t.enabled),
    );
    expect(muted, "the microphone track disabled by mute");

    await doctor.page.click("#lang");
    expect((await doctor.page.textContent("h1")) === "Remote consultation", "the English title after the switch");
    const line = await doctor.page.textContent("#status");
    expect(line.startsWith("You are in the consultation."), `the status line in English too, got "${line}"`);

    await doctor.page.screenshot({ path: path.join(out, "consult-doctor.png"), fullPage: true });
    await patient.page.screenshot({ path: path.join(out, "consult-patient.png"), fullPage: true });

    await doctor.page.click("#end");
    await patient.page.waitForSelector("#over:not([hidden])", { timeout: WAIT });
    const over = await patient.page.textContent("#over-title");
    expect(over === "Buổi khám đã kết thúc.", `the end told to the patient, got "${over}"`);

    const errors = [...doctor.errors, ...patient.errors];
    expect(errors.length === 0, `no script errors, got ${errors.join("; ")}`);
    console.log(JSON.stringify({ ok: true, chat: message, ended: over, doctorFrames, patientFrames, doctorQuality, patientQuality, doctorOpened, patientOpened }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
