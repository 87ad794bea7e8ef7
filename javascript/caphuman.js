// CapHuman: drag on the head preview to turn the head (moves the Yaw / Pitch sliders of that unit).
(function () {
    function setSlider(id, value) {
        const root = gradioApp().getElementById(id);
        if (!root) return;
        const inputs = root.querySelectorAll("input");
        inputs.forEach((input) => {
            const min = parseFloat(input.min), max = parseFloat(input.max);
            input.value = Math.max(min, Math.min(max, Math.round(value)));
            input.dispatchEvent(new Event("input", { bubbles: true }));
        });
    }
    function readSlider(id) {
        const input = gradioApp().querySelector(`#${id} input`);
        return input ? parseFloat(input.value) : 0;
    }
    function attach(gallery) {
        if (gallery.dataset.caphumanDrag) return;
        gallery.dataset.caphumanDrag = "1";
        const uid = gallery.id.replace("caphuman_preview_", "");
        let start = null;
        gallery.addEventListener("mousedown", (e) => {
            start = { x: e.clientX, y: e.clientY, yaw: readSlider(`caphuman_yaw_${uid}`), pitch: readSlider(`caphuman_pitch_${uid}`) };
            e.preventDefault();
        });
        window.addEventListener("mousemove", (e) => {
            if (!start) return;
            setSlider(`caphuman_yaw_${uid}`, start.yaw + (e.clientX - start.x) * 0.5);
            setSlider(`caphuman_pitch_${uid}`, start.pitch - (e.clientY - start.y) * 0.5);
        });
        window.addEventListener("mouseup", () => {
            if (!start) return;
            start = null;
            const button = gradioApp().getElementById(`caphuman_preview_button_${uid}`);
            if (button) button.click();
        });
    }
    onUiUpdate(() => gradioApp().querySelectorAll(".caphuman-preview").forEach(attach));
})();
